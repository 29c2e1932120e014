"""The Electric energy model and its two-tower cloze noise model (Clark et al., EMNLP 2020).

Shapes: B batch, T sequence, C hidden, V vocabulary, N gathered positions.

Module names mirror Hugging Face BERT / ELECTRA (``embeddings.word_embeddings``,
``encoder.layer.0.attention.self.query``...) so that warm starts and imports are renames.
Attention is written out (matmul, additive mask, softmax) rather than through
``scaled_dot_product_attention`` so that the exported ONNX graph has the pattern ONNX Runtime's
transformer optimizer fuses into its Attention kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model_export.config import ModelConfig

# Additive bias for masked attention keys. Finite, so that a query whose keys are all masked
# (a padding row) gives a uniform softmax instead of NaN.
MASK_BIAS = -10000.0


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.embedding_size, padding_idx=cfg.pad_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.embedding_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.embedding_size)
        self.LayerNorm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)
        # Segment 0 everywhere: Electric scores single sentences.
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)[None]
             + self.token_type_embeddings.weight[0])  # (B, T, E)
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        D = C // self.heads
        q = self.query(x).view(B, T, self.heads, D).transpose(1, 2)  # (B, H, T, D)
        k = self.key(x).view(B, T, self.heads, D).transpose(1, 2)
        v = self.value(x).view(B, T, self.heads, D).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D) + bias  # (B, H, T, T)
        probs = self.dropout(scores.softmax(dim=-1))
        return (probs @ v).transpose(1, 2).reshape(B, T, C)


class DenseLayerNorm(nn.Module):
    """Linear, dropout, residual add, LayerNorm: BERT's post-LN sub-layer output."""

    def __init__(self, d_in: int, d_out: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float, dropout: float):
        super().__init__()
        self.self = SelfAttention(hidden, heads, dropout)
        self.output = DenseLayerNorm(hidden, hidden, eps, dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, bias), x)


class Intermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float, dropout: float):
        super().__init__()
        self.attention = Attention(hidden, heads, eps, dropout)
        self.intermediate = Intermediate(hidden, intermediate)
        self.output = DenseLayerNorm(intermediate, hidden, eps, dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, n_layers: int, hidden: int, heads: int, intermediate: int, eps: float,
                 dropout: float):
        super().__init__()
        self.layer = nn.ModuleList(
            Layer(hidden, heads, intermediate, eps, dropout) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 1/0 mask -> (B, 1, 1, T) additive bias hiding padded keys."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_BIAS


class EnergyHead(nn.Module):
    """dense + GELU + dense to one scalar per token.

    The paper writes E(x)_t = w^T h_t; the reference code (google-research/electra, the
    discriminator head reused for Electric) puts a hidden dense+GELU layer first. We follow the
    reference: it is what was trained and evaluated, and it makes ELECTRA discriminators
    (``discriminator_predictions.dense`` / ``dense_prediction``) importable without change.
    """

    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.dense_prediction = nn.Linear(hidden, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(F.gelu(self.dense(h))).squeeze(-1)  # (B, T)


class EnergyModel(nn.Module):
    """Bidirectional encoder over the unmasked sentence, one energy per token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        # ELECTRA-small style models embed narrower than they compute.
        self.embeddings_project = (nn.Linear(cfg.embedding_size, cfg.hidden)
                                   if cfg.embedding_size != cfg.hidden else None)
        self.encoder = Encoder(cfg.layers, cfg.hidden, cfg.heads, cfg.intermediate,
                               cfg.layer_norm_eps, cfg.dropout)
        self.head = EnergyHead(cfg.hidden)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        assert input_ids.shape == attention_mask.shape and input_ids.dim() == 2
        assert input_ids.shape[1] <= self.cfg.max_positions, "sequence longer than max_positions"
        x = self.embeddings(input_ids)  # (B, T, E)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)  # (B, T, C)
        return self.encoder(x, padding_bias(attention_mask, x.dtype))  # (B, T, C)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids and 1/0 mask -> (B, T) energies (padding positions hold garbage)."""
        return self.head(self.hidden_states(input_ids, attention_mask))


class Tower(nn.Module):
    """One direction of the cloze noise model: a causally masked transformer."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.noise_hidden)
        self.LayerNorm = nn.LayerNorm(cfg.noise_hidden, eps=cfg.layer_norm_eps)
        self.encoder = Encoder(cfg.noise_layers, cfg.noise_hidden, cfg.noise_heads,
                               cfg.noise_intermediate, cfg.layer_norm_eps, cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        x = self.LayerNorm(x + self.position_embeddings.weight[:T])
        return self.encoder(x, bias)  # (B, T, Cn)


class ClozeNoiseModel(nn.Module):
    """q(x_t | x_\\t) from a left-to-right and a right-to-left tower (the paper's section 3).

    Position t is predicted from ``[h_ltr[t-1]; h_rtl[t+1]]``: everything left of t and everything
    right of t, never x_t itself. The towers share the energy model's token embeddings (input and
    tied output), projected down to their narrower width. The first and last positions have no
    prediction; they are [CLS] and [SEP], which are never noised.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.input_project = nn.Linear(cfg.embedding_size, cfg.noise_hidden)
        self.ltr = Tower(cfg)
        self.rtl = Tower(cfg)
        self.output_project = nn.Linear(2 * cfg.noise_hidden, cfg.embedding_size)
        self.output_LayerNorm = nn.LayerNorm(cfg.embedding_size, eps=cfg.layer_norm_eps)
        self.output_bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def context(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                word_embeddings: nn.Embedding) -> torch.Tensor:
        """(B, T) -> (B, T, 2Cn) context vectors; row t sees every token but x_t."""
        B, T = input_ids.shape
        x = self.input_project(word_embeddings(input_ids))  # (B, T, Cn)
        keys = padding_bias(attention_mask, x.dtype)  # (B, 1, 1, T)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)  # key j > query i
        ltr = self.ltr(x, keys + future.to(x.dtype) * MASK_BIAS)  # sees x_0..x_t
        rtl = self.rtl(x, keys + future.T.to(x.dtype) * MASK_BIAS)  # sees x_t..x_T-1
        zero = x.new_zeros(B, 1, x.shape[-1])
        left = torch.cat([zero, ltr[:, :-1]], dim=1)  # row t: h_ltr[t-1]
        right = torch.cat([rtl[:, 1:], zero], dim=1)  # row t: h_rtl[t+1]
        return torch.cat([left, right], dim=-1)  # (B, T, 2Cn)

    def logits(self, context: torch.Tensor, word_embeddings: nn.Embedding) -> torch.Tensor:
        """(..., 2Cn) gathered context rows -> (..., V) unnormalised log q."""
        h = self.output_LayerNorm(F.gelu(self.output_project(context)))  # (..., E)
        # Tied output embeddings; F.linear folds the bias add into the matmul over V.
        return F.linear(h, word_embeddings.weight, self.output_bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                word_embeddings: nn.Embedding) -> torch.Tensor:
        """Full (B, T, V) log q; training computes it only at the positions it needs."""
        ctx = self.context(input_ids, attention_mask, word_embeddings)
        return self.logits(ctx, word_embeddings).log_softmax(-1)


class Electric(nn.Module):
    """The energy model and the two-tower noise model, sharing token embeddings."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.energy = EnergyModel(cfg)
        self.noise = ClozeNoiseModel(cfg)
        self.apply(self._init_weights)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.energy.embeddings.word_embeddings

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.energy(input_ids, attention_mask)

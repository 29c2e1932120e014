"""Sentence scorers for the evaluation: the artifact under test and the baselines it must beat.

Every scorer maps sentences to ``(score, num_tokens)``: a log-likelihood-like number (higher =
better) and the count of units it summed over.

- :class:`ArtifactScorer`: an artifact variant run through the CLI's in-process scorer
  (service/local.py ``InProcessScorer``: the service's own tokenizer, engine and
  ``score = -Σ_t E_t`` over non-special tokens), so the figures are the service's.
- :class:`TorchEnergyScorer`: the same in PyTorch for an ``Electric`` model; with a warm start
  and a random energy head it is the "nothing learnt yet" baseline.
- :class:`NoisePLLScorer` / :class:`NgramPLLScorer`: the noise model's one-pass pseudo-log-
  likelihood ``Σ_t log q(x_t | x_\\t)``: the cloze q sees every position's context in one pass.
- The Kneser-Ney LM (kneser_ney.py) is a scorer as it is.

Sentences are sorted by length and cut into batches under a padded-token budget
(service/batch_policy.py ``length_batches``), so padding costs little. torch is imported only by the
scorers that need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from service.batch_policy import length_batches, pad
from service.tokenization import Encoded, SentenceTokenizer

if TYPE_CHECKING:
    from model_export.model import Electric
    from model_export.ngram import NgramCloze

MAX_BATCH_TOKENS = 8192
MAX_BATCH_ROWS = 256
# Rows of the (rows, V) noise softmax computed at once: ~125 MB of float32 at V = 30522.
NOISE_CHUNK_ROWS = 1024


class Scorer(Protocol):
    def score(self, sentences: list[str]) -> list[tuple[float, int]]:
        """Per sentence: (log-likelihood-like score, higher = better; tokens it covers)."""
        ...


class CachedScorer:
    """Scores each distinct sentence once per run: eval sets repeat hypotheses a lot."""

    def __init__(self, inner: Scorer):
        self.inner = inner
        self.cache: dict[str, tuple[float, int]] = {}

    def score(self, sentences: list[str]) -> list[tuple[float, int]]:
        missing = [s for s in dict.fromkeys(sentences) if s not in self.cache]
        if missing:
            self.cache.update(zip(missing, self.inner.score(missing)))
        return [self.cache[s] for s in sentences]


def pad_batch(encoded: Sequence[Encoded], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded (B, T) ids, 1/0 mask (service/batch_policy.py ``pad``) and scored flags."""
    ids, mask = pad([e.ids for e in encoded], pad_id)
    scored = np.zeros(ids.shape, dtype=bool)
    for row, e in enumerate(encoded):
        scored[row, :e.length] = e.scored
    return ids, mask, scored


class _BatchedScorer:
    """Tokenize, batch by length, run ``_batch`` on each (B, T) batch, put results back in order."""

    def __init__(self, tokenizer: SentenceTokenizer, pad_id: int, max_tokens: int):
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.max_tokens = max_tokens

    def _batch(self, encoded: list[Encoded]) -> list[float]:
        raise NotImplementedError

    def score(self, sentences: list[str]) -> list[tuple[float, int]]:
        # Eval sets hold nothing near 512 tokens; truncation only guards against a surprise.
        encoded = self.tokenizer.encode(sentences, truncate=True)
        out: list[tuple[float, int]] = [(0.0, 0)] * len(sentences)
        for batch in length_batches([e.length for e in encoded], self.max_tokens,
                                    MAX_BATCH_ROWS):
            scores = self._batch([encoded[i] for i in batch])
            for i, s in zip(batch, scores):
                out[i] = (s, encoded[i].num_tokens)
        return out


class ArtifactScorer:
    """One variant of an artifact folder on ONNX Runtime (CPU unless the service finds CUDA),
    batched as the other scorers here are."""

    def __init__(self, folder: Path, variant: str = "fp32", threads: int = 0,
                 max_tokens: int = MAX_BATCH_TOKENS):
        from service.local import InProcessScorer  # loads ONNX Runtime: only when used

        self.local = InProcessScorer(folder, variant, threads)  # type: ignore[arg-type]
        self.max_tokens = max_tokens

    def score(self, sentences: list[str]) -> list[tuple[float, int]]:
        encoded = self.local.tokenizer.encode(sentences, truncate=True)  # as _BatchedScorer.score
        batches = length_batches([e.length for e in encoded], self.max_tokens, MAX_BATCH_ROWS)
        return [(r.score, r.num_tokens) for r in self.local.score_batches(encoded, batches)]


class _TorchScorer(_BatchedScorer):
    """A scorer over an ``Electric`` model in PyTorch (eval mode) with the model's tokenizer."""

    def __init__(self, model: Electric, tokenizer_path: Path, max_tokens: int = MAX_BATCH_TOKENS):
        tokenizer = SentenceTokenizer.from_file(tokenizer_path, model.cfg.max_positions)
        super().__init__(tokenizer, model.cfg.pad_id, max_tokens)
        self.model = model.eval()


class TorchEnergyScorer(_TorchScorer):
    """``-Σ E`` from an ``Electric`` model's energy network in PyTorch (eval mode, no grad)."""

    def _batch(self, encoded: list[Encoded]) -> list[float]:
        import torch

        ids, mask, scored = pad_batch(encoded, self.pad_id)
        with torch.inference_mode():
            energies = self.model.energy(torch.from_numpy(ids), torch.from_numpy(mask))  # (B, T)
        e = energies.double().numpy()
        return [float(x) for x in -(e * scored).sum(axis=1)]


class NoisePLLScorer(_TorchScorer):
    """``Σ_t log q(x_t | x_\\t)`` of the model's two-tower cloze noise model, one pass."""

    def _batch(self, encoded: list[Encoded]) -> list[float]:
        import torch

        ids, mask, scored = pad_batch(encoded, self.pad_id)
        noise, emb = self.model.noise, self.model.word_embeddings
        t_ids = torch.from_numpy(ids)
        with torch.inference_mode():
            ctx = noise.context(t_ids, torch.from_numpy(mask), emb)  # (B, T, 2Cn)
            pos = torch.from_numpy(np.argwhere(scored))  # (M, 2)
            rows = ctx[pos[:, 0], pos[:, 1]]  # (M, 2Cn)
            targets = t_ids[pos[:, 0], pos[:, 1]]  # (M,)
            logq = torch.cat([
                noise.logits(rows[i:i + NOISE_CHUNK_ROWS], emb).float().log_softmax(-1)
                .gather(-1, targets[i:i + NOISE_CHUNK_ROWS, None])[:, 0]
                for i in range(0, len(rows), NOISE_CHUNK_ROWS)]) if len(rows) else torch.zeros(0)
        sums = np.bincount(pos[:, 0].numpy(), weights=logq.double().numpy(),
                           minlength=len(encoded))
        return [float(x) for x in sums]


class NgramPLLScorer(_BatchedScorer):
    """``Σ_t log q(x_t | x_{t-1}, x_{t+1})`` of a count-based n-gram cloze model (ngram.py)."""

    def __init__(self, ngram: NgramCloze, tokenizer_path: Path, max_length: int = 512):
        tokenizer = SentenceTokenizer.from_file(tokenizer_path, max_length)
        super().__init__(tokenizer, ngram.pad_id, MAX_BATCH_TOKENS)
        self.ngram = ngram

    def _batch(self, encoded: list[Encoded]) -> list[float]:
        ids, mask, scored = pad_batch(encoded, self.pad_id)
        pos = np.argwhere(scored)  # (M, 2)
        left, right = self.ngram.neighbours(ids, mask, pos)
        logq = self.ngram.log_prob(left, right, ids[pos[:, 0], pos[:, 1]])
        return [float(x) for x in np.bincount(pos[:, 0], weights=logq, minlength=len(encoded))]


def warm_start_model(folder: Path, seed: int = 0) -> Electric:
    """An Electric model warm-started from a BERT-family folder, energy head random (seeded)."""
    import torch

    from model_export.model import Electric
    from model_export.warmstart import config_from_bert, load_bert_encoder

    cfg = config_from_bert(folder)
    torch.manual_seed(seed)
    model = Electric(cfg)
    load_bert_encoder(model, folder)
    return model.eval()


def has_noise_weights(checkpoint: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(checkpoint), framework="pt") as f:
        names: list[str] = f.keys()
    return any(k.startswith("noise.") for k in names)


def ngram_cloze_from_corpora(tokenizer_path: Path, corpora: Sequence[Path]) -> NgramCloze:
    """An n-gram cloze q counted over the corpora, one framed sequence per line."""
    from tokenizers import Tokenizer

    from model_export.corpus import read_lines
    from model_export.ngram import NgramCloze

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.no_truncation()
    cls, sep, pad = (tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]"))
    if cls is None or sep is None or pad is None:
        raise ValueError(f"{tokenizer_path}: a BERT-style vocabulary with [CLS], [SEP] and [PAD] "
                         "is needed")
    specials = [cls, sep]
    lines = list(read_lines(corpora))
    sequences = [np.asarray(e.ids, dtype=np.int64)
                 for i in range(0, len(lines), 10_000)
                 for e in tok.encode_batch(lines[i:i + 10_000])]
    return NgramCloze.build(sequences, tok.get_vocab_size(), specials, pad)

"""Electric's training objective: noise-contrastive estimation against a cloze noise model.

Shapes: B batch, T sequence, V vocabulary, N noise positions, M data positions kept in the loss.

Clark et al. (2020), section 3. Per sequence with n scorable tokens, k positions are replaced by
samples from the noise distribution q(x_t | x_\\t). The energy model sees the corrupted sequence
and a binary classifier at every scored position decides "noise or data" with

    logit(noise) = E(x)_t + stopgrad(log q(x_t | x_\\t)) + log(k / (n - k))

which is log[k q(x_t) / ((n - k) p(x_t))] when p(x_t | x_\\t) = exp(-E(x)_t) / Z: the Bayes
posterior odds of the two processes, so at the optimum -E(x)_t is the self-normalised cloze
log-probability. The total loss is ``mle_weight * cloze MLE + nce_weight * NCE`` as in
google-research/electra's ``electric_objective`` (gen_weight 1, disc_weight 50).

Where this differs from the reference implementation, and why:

- Noise positions are drawn WITHOUT replacement, exactly k = max(1, round(mask_prob * n)) of
  them (capped at n - 1). The reference draws round(mask_prob * len) positions with
  replacement, so duplicates collapse, the realised number of noise tokens is random and below
  k, and the prior log-odds it adds (log(mask_prob / (1 - mask_prob))) is not the true ratio.
  NCE is only consistent when the prior term equals the actual noise/data ratio, so we draw
  exactly k and add log(k / (n - k)) for each sequence.
- [CLS], [SEP] and padding are left out of the loss (the reference weights every non-pad
  position). q is undefined there (the towers make no prediction for the first and last
  position) and the service never scores special tokens, so their energies are never used.
- A noise sample that happens to equal the original token stays labelled "noise". In NCE the
  label names the process that produced the position, not whether the token changed; the
  posterior above already accounts for q putting mass on the true token. Relabelling copies
  as data (ELECTRA's rule) changes the posterior the classifier must learn, so -E(x)_t would
  no longer converge to log p (the more often q copies, the more data-like its samples look).
- The cloze MLE that trains q covers the noise positions only (the reference: every position).
  They are a uniform random subset, so the estimate has the same expectation up to rounding of
  k, and the V-way softmax needs a backward pass at ~15% of the positions.
- ``data_fraction < 1`` keeps a uniform subset of the data positions of each sequence (at least
  one) and weights each kept one by (data positions) / (kept), an unbiased estimate of the full
  loss that saves the V-way softmax for log q at the dropped positions.

Like the reference, q is computed once from the ORIGINAL sequence: a data position's log q is
conditioned on the original neighbours, although the energy model sees some of them replaced.
With 15% noise this is the approximation the paper trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from model_export.model import Electric

# Rows of the V-way softmax computed at once for data positions (no grad): bounds the transient
# (rows, V) float32 buffer to ~250 MB at V = 30522.
DATA_CHUNK_ROWS = 2048

# Floor for log q in the logit: a token the noise model gives probability 0 (it never should at a
# scorable position) would otherwise turn the loss into NaN through -inf * 0.
MIN_LOG_Q = -1e4


@dataclass(frozen=True)
class NCEConfig:
    mask_prob: float = 0.15
    """Fraction of scorable (non-special, non-pad) positions of a sequence replaced by noise."""
    nce_weight: float = 50.0
    """Weight of the NCE loss (the reference's disc_weight)."""
    mle_weight: float = 1.0
    """Weight of the noise model's cloze maximum-likelihood loss (the reference's gen_weight)."""
    data_fraction: float = 1.0
    """Fraction of data (non-noise) positions kept in the NCE loss, reweighted to stay unbiased."""

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise ValueError(f"mask_prob must be in (0, 1), got {self.mask_prob}")
        if not 0.0 < self.data_fraction <= 1.0:
            raise ValueError(f"data_fraction must be in (0, 1], got {self.data_fraction}")
        if self.nce_weight < 0 or self.mle_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got nce {self.nce_weight}, "
                             f"mle {self.mle_weight}")


@dataclass
class NoiseDraw:
    samples: torch.Tensor
    """(N,) token ids drawn from q at the noise positions."""
    logq_noise: torch.Tensor
    """(N,) log q(sample | original context)."""
    logq_data: torch.Tensor
    """(M,) log q(original token | original context) at the data positions."""
    mle_loss: torch.Tensor | None
    """Scalar cloze cross-entropy to train q with, or None for a fixed noise model."""


class NoiseModel(Protocol):
    def sample_and_score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         noise_pos: torch.Tensor, data_pos: torch.Tensor,
                         generator: torch.Generator) -> NoiseDraw:
        """Sample at noise_pos (N, 2) and score the originals at data_pos (M, 2).

        Both are (batch, position) rows into the (B, T) input_ids; q conditions on input_ids.
        """
        ...


class TwoTowerNoise:
    """The Electric model's own two-tower cloze network as a NoiseModel.

    The towers run once over the original ids; the V-way softmax is computed only at the rows
    the loss needs. Noise rows keep their graph (the cloze MLE trains on them); data rows only
    need log q under stop-gradient, so they run without autograd, in chunks.
    """

    def __init__(self, model: Electric):
        self.model = model

    @property
    def device(self) -> torch.device:
        return self.model.word_embeddings.weight.device

    def sample_and_score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         noise_pos: torch.Tensor, data_pos: torch.Tensor,
                         generator: torch.Generator) -> NoiseDraw:
        noise, emb = self.model.noise, self.model.word_embeddings
        ctx = noise.context(input_ids, attention_mask, emb)  # (B, T, 2Cn)

        noise_ctx = ctx[noise_pos[:, 0], noise_pos[:, 1]]  # (N, 2Cn)
        originals = input_ids[noise_pos[:, 0], noise_pos[:, 1]]  # (N,)
        logits = noise.logits(noise_ctx, emb).float()  # (N, V)
        log_probs = logits.log_softmax(-1)  # (N, V), once for the loss and the draw
        # Trained on the noise rows only: a uniform random subset of the scorable positions, so an
        # estimate of the reference's all-position cloze loss at ~15% of its backward cost.
        mle_loss = (F.nll_loss(log_probs, originals) if len(originals)
                    else logits.sum() * 0.0)
        with torch.no_grad():
            samples, logq_noise = sample_categorical(log_probs.detach(), generator)

            data_ctx = ctx.detach()[data_pos[:, 0], data_pos[:, 1]]  # (M, 2Cn)
            data_ids = input_ids[data_pos[:, 0], data_pos[:, 1]]  # (M,)
            chunks = [_log_prob(noise.logits(data_ctx[i:i + DATA_CHUNK_ROWS], emb).float(),
                                data_ids[i:i + DATA_CHUNK_ROWS])
                      for i in range(0, len(data_ids), DATA_CHUNK_ROWS)]
            logq_data = torch.cat(chunks) if chunks else logq_noise.new_zeros(0)
        return NoiseDraw(samples=samples, logq_noise=logq_noise, logq_data=logq_data,
                         mle_loss=mle_loss)


def sample_categorical(log_probs: torch.Tensor, generator: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) normalised log-probabilities -> (N,) one sample of each row, and its
    log-probability.

    By the inverse of each row's cumulative distribution: one uniform number a row, found by
    binary search in the running sum of the probabilities. Gumbel-max (argmax of the logits plus
    -log(-log U)) draws from the same distribution but needs N x V uniform numbers and two logs
    of each; on a CPU that took 2.4 times as long for N = 380 rows of 30,522. The uniform is
    scaled by each row's own total, so float32 rounding in the sum cannot leave a target past the
    end; a token of probability 0 adds nothing to the sum and is never found. The draw happens
    on the generator's device; pass a generator on the model's device to avoid a copy.
    """
    cdf = log_probs.exp().cumsum_(-1)  # (N, V)
    u = torch.rand((len(log_probs), 1), generator=generator, device=generator.device)
    target = u.to(log_probs.device) * cdf[:, -1:]  # (N, 1), in [0, row total)
    samples = torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(
        max=log_probs.shape[-1] - 1)
    return samples, log_probs.gather(-1, samples[:, None])[:, 0]


def _log_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(R, V) logits, (R,) ids -> (R,) log-softmax at the ids without materialising it."""
    return logits.gather(-1, targets[:, None])[:, 0] - logits.logsumexp(-1)


@dataclass
class NCEOutput:
    loss: torch.Tensor
    """mle_weight * mle_loss + nce_weight * nce_loss; the scalar to backpropagate."""
    nce_loss: torch.Tensor
    """Sigmoid cross-entropy summed over loss positions / number of scorable positions."""
    mle_loss: torch.Tensor
    """The noise model's cloze cross-entropy (0 for a fixed noise model)."""
    noise_acc: float
    """Fraction of noise positions with logit(noise) > 0."""
    data_acc: float
    """Fraction of kept data positions with logit(noise) < 0."""
    n_noise: float
    """Noise positions in the batch."""
    n_data: float
    """Data positions kept in the loss."""
    n_scorable: float
    """Scorable positions in sequences that took part (the NCE normaliser)."""
    copy_rate: float
    """Fraction of noise samples equal to the original token (q's cloze accuracy, sampled)."""


def choose_positions(scorable: torch.Tensor, cfg: NCEConfig, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the noise positions and the kept data positions of every sequence.

    Returns (noise_mask, data_mask, k, d): (B, T) bools and (B,) counts of noise and of all data
    positions. One random permutation of the scorable positions per row gives both sets: its
    first k entries are noise (uniform without replacement) and the next m are a uniform subset
    of the rest. Sequences with fewer than 2 scorable tokens take no part: with one token the
    prior odds k / (n - k) are degenerate.
    """
    n = scorable.sum(-1)  # (B,)
    valid = n >= 2
    k = torch.round(cfg.mask_prob * n).clamp(min=1)
    k = torch.minimum(k, n - 1).where(valid, torch.zeros_like(n)).long()
    d = (n - k).where(valid, torch.zeros_like(n))
    m = d if cfg.data_fraction >= 1.0 else torch.round(cfg.data_fraction * d).clamp(min=1)
    m = torch.minimum(m, d).where(valid, torch.zeros_like(n)).long()

    keys = torch.rand(scorable.shape, generator=generator, device=generator.device)
    keys = keys.to(scorable.device).masked_fill(~scorable, 2.0)  # non-scorable sort last
    order = keys.argsort(-1)  # (B, T)
    rank = torch.empty_like(order).scatter_(
        -1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    noise_mask = scorable & (rank < k[:, None])
    data_mask = scorable & (rank >= k[:, None]) & (rank < (k + m)[:, None])
    return noise_mask, data_mask, k, d


def nce_loss(model: Electric, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             special_mask: torch.Tensor, cfg: NCEConfig, noise: NoiseModel,
             generator: torch.Generator) -> NCEOutput:
    """One batch of Electric's objective.

    input_ids, attention_mask, special_mask: (B, T), right padded; special_mask is 1 at [CLS],
    [SEP] and other special tokens. ``model(ids, mask)`` must return (B, T) energies.
    """
    assert input_ids.shape == attention_mask.shape == special_mask.shape
    scorable = attention_mask.bool() & ~special_mask.bool()  # (B, T)
    noise_mask, data_mask, k, d = choose_positions(scorable, cfg, generator)
    noise_pos = noise_mask.nonzero()  # (N, 2)
    data_pos = data_mask.nonzero()  # (M, 2)

    draw = noise.sample_and_score(input_ids, attention_mask, noise_pos, data_pos, generator)
    corrupted = input_ids.clone()
    corrupted[noise_pos[:, 0], noise_pos[:, 1]] = draw.samples.to(input_ids.dtype)
    energies = model(corrupted, attention_mask).float()  # (B, T)

    # Prior log-odds of noise at any position of the sequence; 0 for rows not taking part.
    kf, df = k.float(), d.float()
    log_prior = torch.where(k > 0, kf.log() - df.clamp(min=1).log(), torch.zeros_like(kf))
    logq_noise = draw.logq_noise.detach().float().clamp(min=MIN_LOG_Q)
    logq_data = draw.logq_data.detach().float().clamp(min=MIN_LOG_Q)
    noise_logit = (energies[noise_pos[:, 0], noise_pos[:, 1]] + logq_noise
                   + log_prior[noise_pos[:, 0]])  # (N,)
    data_logit = (energies[data_pos[:, 0], data_pos[:, 1]] + logq_data
                  + log_prior[data_pos[:, 0]])  # (M,)

    # Each kept data position stands for d / m data positions of its sequence.
    kept = data_mask.sum(-1)  # (B,)
    data_weight = (df / kept.clamp(min=1).float())[data_pos[:, 0]]  # (M,)
    n_scorable = (k + d).sum()
    nce_sum = (F.binary_cross_entropy_with_logits(noise_logit, torch.ones_like(noise_logit),
                                                  reduction="sum")
               + (data_weight * F.binary_cross_entropy_with_logits(
                   data_logit, torch.zeros_like(data_logit), reduction="none")).sum())
    nce = nce_sum / n_scorable.clamp(min=1).float()
    mle = draw.mle_loss if draw.mle_loss is not None else energies.new_zeros(())
    total = cfg.mle_weight * mle + cfg.nce_weight * nce

    samples = draw.samples.to(input_ids.device)
    originals = input_ids[noise_pos[:, 0], noise_pos[:, 1]]
    noise_right, data_right, copies, n_total = torch.stack([
        (noise_logit > 0).float().sum(), (data_logit < 0).float().sum(),
        (samples == originals).float().sum(), n_scorable.float(),
    ]).tolist()  # one device sync for all the floats
    n_noise, n_data = float(len(noise_pos)), float(len(data_pos))
    return NCEOutput(
        loss=total, nce_loss=nce, mle_loss=mle,
        noise_acc=noise_right / max(n_noise, 1.0), data_acc=data_right / max(n_data, 1.0),
        n_noise=n_noise, n_data=n_data, n_scorable=n_total, copy_rate=copies / max(n_noise, 1.0))

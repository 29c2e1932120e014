"""Fit the re-ranking weights ``lm_weight`` and ``length_bonus`` on n-best lists with references.

Re-ranking picks, in each list, the hypothesis with the largest
``combined = base_score + lm_weight * score + length_bonus * num_tokens`` (service/scoring.py;
ties go to the earlier hypothesis, as the service's stable sort does). Tuning is a grid search
for the weights that minimise corpus WER (total word errors / total reference words, as
``jiwer`` computes it over a corpus) on a dev set. Word errors are counted once per hypothesis
with ``jiwer``; every grid point is then an argmax over a (lists, hypotheses) matrix.

The grid adapts to the scorer's scale, which varies by orders of magnitude between models
(nats for a trained Electric model, arbitrary units for an untrained head):

- ``lm_weight`` spans ``[1e-2, 1e2] / spread`` on a log scale (and 0), where ``spread`` is the
  median over lists of (largest - smallest) score: from "the LM only breaks ties" to "the LM
  overrides the base score".
- ``length_bonus`` is searched as ``lm_weight * bonus_per_token`` with ``bonus_per_token`` in
  ``[-2, 2] * typical per-token score``: the bonus is a correction to the LM's per-token cost,
  so it scales with it.

Among grid points of equal WER the one whose neighbourhood is best on average wins (a plateau's
middle rather than its edge), then the smaller ``lm_weight``.

No torch here: the service's ``electric tune`` runs on a serving install.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jiwer
import numpy as np
from numpy.typing import NDArray

from service.scoring import Weights

LM_WEIGHT_DECADES = (-2.0, 2.0)
"""log10 range of ``lm_weight * spread``."""
LM_WEIGHT_STEPS = 41
BONUS_RANGE = 2.0
"""``bonus_per_token`` spans +-BONUS_RANGE times the median |score| per token."""
BONUS_STEPS = 41


@dataclass(frozen=True)
class TuningList:
    """One n-best list: the hypotheses, their base and LM scores, and the reference."""

    reference: str
    texts: Sequence[str]
    base_scores: Sequence[float]
    """The recogniser's log-domain scores, higher = better; 0 where it gives none."""
    scores: Sequence[float]
    """LM scores (higher = better), e.g. Electric's ``-Σ E``."""
    num_tokens: Sequence[int]


@dataclass(frozen=True)
class NbestMatrix:
    """Lists padded to K hypotheses; padding columns have ``valid`` False."""

    errors: NDArray[np.float64]
    """(L, K) word errors (substitutions + deletions + insertions) against the reference."""
    ref_words: NDArray[np.float64]
    """(L,) words in each reference."""
    base: NDArray[np.float64]
    """(L, K)"""
    score: NDArray[np.float64]
    """(L, K)"""
    num_tokens: NDArray[np.float64]
    """(L, K)"""
    valid: NDArray[np.bool_]
    """(L, K)"""

    @property
    def lists(self) -> int:
        return int(self.errors.shape[0])

    def subset(self, rows: NDArray[np.bool_] | NDArray[np.int64]) -> NbestMatrix:
        return NbestMatrix(self.errors[rows], self.ref_words[rows], self.base[rows],
                           self.score[rows], self.num_tokens[rows], self.valid[rows])


@dataclass(frozen=True)
class Grid:
    lm_weights: tuple[float, ...]
    bonuses_per_token: tuple[float, ...]
    """``length_bonus = lm_weight * bonus_per_token``."""


@dataclass(frozen=True)
class TuningResult:
    weights: Weights
    wer: float
    """Corpus WER with ``weights`` on the lists they were fitted on."""
    baseline_wer: float
    """Corpus WER of the base scores alone (lm_weight = length_bonus = 0)."""
    oracle_wer: float
    """Corpus WER when every list picks its best hypothesis."""
    lists: int
    grid_points: int


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words) of one hypothesis, as jiwer counts them."""
    out = jiwer.process_words(reference, hypothesis)
    errors = int(out.substitutions + out.deletions + out.insertions)
    return errors, int(out.hits + out.substitutions + out.deletions)


def nbest_matrix(lists: Sequence[TuningList]) -> NbestMatrix:
    """Count every hypothesis's word errors and pad the lists into matrices."""
    if not lists:
        raise ValueError("no n-best lists to tune on")
    K = max(len(lst.texts) for lst in lists)
    L = len(lists)
    errors, base, score, tokens = (np.zeros((L, K)) for _ in range(4))
    valid = np.zeros((L, K), dtype=np.bool_)
    ref_words = np.zeros(L)
    for i, lst in enumerate(lists):
        n = len(lst.texts)
        if not (len(lst.base_scores) == len(lst.scores) == len(lst.num_tokens) == n) or n == 0:
            raise ValueError(f"list {i}: {n} texts, {len(lst.base_scores)} base scores, "
                             f"{len(lst.scores)} scores, {len(lst.num_tokens)} token counts; "
                             "need one of each per hypothesis, at least one hypothesis")
        counted: dict[str, int] = {}  # n-best lists repeat texts
        for j, text in enumerate(lst.texts):
            if text not in counted:
                counted[text], ref_words[i] = word_errors(lst.reference, text)
            errors[i, j] = counted[text]
        base[i, :n], score[i, :n], tokens[i, :n] = lst.base_scores, lst.scores, lst.num_tokens
        valid[i, :n] = True
    return NbestMatrix(errors, ref_words, base, score, tokens, valid)


def choose(m: NbestMatrix, weights: Weights) -> NDArray[np.int64]:
    """(L,) index of the hypothesis each list picks; ties go to the earlier one."""
    combined = m.base + weights.lm_weight * m.score + weights.length_bonus * m.num_tokens
    combined = np.where(m.valid, combined, -np.inf)
    return np.asarray(combined.argmax(axis=1), dtype=np.int64)


def corpus_wer(m: NbestMatrix, chosen: NDArray[np.int64]) -> float:
    """Total errors of the chosen hypotheses / total reference words."""
    picked = m.errors[np.arange(m.lists), chosen]
    return float(picked.sum() / max(m.ref_words.sum(), 1.0))


def oracle_wer(m: NbestMatrix) -> float:
    best = np.where(m.valid, m.errors, np.inf).min(axis=1)
    return float(best.sum() / max(m.ref_words.sum(), 1.0))


def default_grid(m: NbestMatrix) -> Grid:
    """The scale-adapted grid described in the module docstring."""
    masked = np.where(m.valid, m.score, np.nan)
    with np.errstate(invalid="ignore"):
        spread = float(np.nanmedian(np.nanmax(masked, axis=1) - np.nanmin(masked, axis=1)))
        per_token = np.abs(m.score[m.valid & (m.num_tokens > 0)]
                           / m.num_tokens[m.valid & (m.num_tokens > 0)])
    if not np.isfinite(spread) or spread <= 0:
        spread = 1.0  # every list scores its hypotheses alike: any weight does the same
    typical = float(np.median(per_token)) if per_token.size else 1.0
    if not np.isfinite(typical) or typical <= 0:
        typical = 1.0
    lo, hi = LM_WEIGHT_DECADES
    lm = np.concatenate([[0.0], np.logspace(lo, hi, LM_WEIGHT_STEPS) / spread])
    bonus = np.linspace(-BONUS_RANGE, BONUS_RANGE, BONUS_STEPS) * typical
    return Grid(tuple(float(x) for x in lm), tuple(float(x) for x in bonus))


def grid_errors(m: NbestMatrix, grid: Grid) -> NDArray[np.float64]:
    """(len(lm_weights), len(bonuses)) total word errors at every grid point."""
    bonus = np.asarray(grid.bonuses_per_token)[:, None, None]  # (Bn, 1, 1)
    rows = np.arange(m.lists)
    out = np.zeros((len(grid.lm_weights), len(grid.bonuses_per_token)))
    for a, lm in enumerate(grid.lm_weights):
        # (Bn, L, K): one argmax per bonus value and list, vectorised over both.
        # Same arithmetic as choose(), so exact ties break the same way here and there.
        combined = m.base[None] + lm * m.score[None] + (lm * bonus) * m.num_tokens[None]
        chosen = np.where(m.valid[None], combined, -np.inf).argmax(axis=2)  # (Bn, L)
        out[a] = m.errors[rows[None], chosen].sum(axis=1)
    return out


def _neighbourhood_mean(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mean over each cell's 3x3 neighbourhood (edge cells use the neighbours they have)."""
    padded = np.pad(values, 1, constant_values=np.nan)
    stack = np.stack([padded[i:i + values.shape[0], j:j + values.shape[1]]
                      for i in range(3) for j in range(3)])
    return np.asarray(np.nanmean(stack, axis=0))


def grid_search(m: NbestMatrix, grid: Grid | None = None) -> TuningResult:
    """The weights with the lowest corpus WER on ``m`` (see the module docstring for ties)."""
    grid = grid or default_grid(m)
    errors = grid_errors(m, grid)
    smooth = _neighbourhood_mean(errors)
    # lexsort: last key first. Lowest errors, then best neighbourhood, then smallest lm_weight.
    lm_index = np.broadcast_to(np.arange(errors.shape[0])[:, None], errors.shape)
    best = int(np.lexsort((lm_index.ravel(), smooth.ravel(), errors.ravel()))[0])
    a, b = np.unravel_index(best, errors.shape)
    lm = grid.lm_weights[a]
    # + 0.0: a zero weight times a negative bonus would print as -0.
    weights = Weights(lm_weight=lm, length_bonus=lm * grid.bonuses_per_token[b] + 0.0)
    return TuningResult(
        weights=weights,
        wer=corpus_wer(m, choose(m, weights)),
        baseline_wer=corpus_wer(m, choose(m, Weights(0.0, 0.0))),
        oracle_wer=oracle_wer(m),
        lists=m.lists,
        grid_points=int(errors.size),
    )

"""Fit the re-ranking weights ``lm_weight`` and ``length_bonus`` on n-best lists with references.

Re-ranking picks, in each list, the hypothesis with the largest
``combined = base_score + lm_weight * score + length_bonus * num_tokens`` (service/scoring.py;
ties go to the earlier hypothesis, as the service's stable sort does). Tuning is a grid search
for the weights that give the best corpus metric on a dev set: WER for ASR, BLEU or chrF for MT
(service/rerank/metrics.py). Every metric there adds up over sentences, so each hypothesis's
statistics are computed once and every grid point is an argmax over a (lists, hypotheses)
matrix followed by a sum.

The grid adapts to the scorer's scale, which varies by orders of magnitude between models
(nats for a trained Electric model, arbitrary units for an untrained head):

- ``lm_weight`` spans ``[1e-2, 1e2] / spread`` on a log scale (and 0), where ``spread`` is the
  median over lists of (largest - smallest) score: from "the LM only breaks ties" to "the LM
  overrides the base score".
- ``length_bonus`` is searched as ``lm_weight * bonus_per_token`` with ``bonus_per_token`` in
  ``[-2, 2] * typical per-token score``: the bonus is a correction to the LM's per-token cost,
  so it scales with it.

A :class:`FixedGrid` searches explicit ``lm_weight`` and ``length_bonus`` values instead. Among
grid points of equal value the one whose neighbourhood is best on average wins (a plateau's
middle rather than its edge), then the smaller ``lm_weight``.

No torch here: the service's ``electric tune`` runs on a serving install.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.rerank.metrics import (  # noqa: F401  (word_errors: part of this module's API)
    METRICS,
    Metric,
    WordErrorRate,
    format_value,
    metric_named,
    word_errors,
)
from service.scoring import Weights

LM_WEIGHT_DECADES = (-2.0, 2.0)
"""log10 range of ``lm_weight * spread``."""
LM_WEIGHT_STEPS = 41
BONUS_RANGE = 2.0
"""``bonus_per_token`` spans +-BONUS_RANGE times the median |score| per token."""
BONUS_STEPS = 41

Floats = NDArray[np.float64]


# -- n-best lists as matrices -------------------------------------------------------------------

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
    """Lists padded to K hypotheses; padding columns have ``valid`` False and zero stats."""

    stats: Floats
    """(L, K, S) the metric's statistics of every hypothesis."""
    base: Floats
    """(L, K)"""
    score: Floats
    """(L, K)"""
    num_tokens: Floats
    """(L, K)"""
    valid: NDArray[np.bool_]
    """(L, K)"""
    metric: Metric

    @property
    def lists(self) -> int:
        return int(self.stats.shape[0])

    @property
    def errors(self) -> Floats:
        """(L, K) word errors (substitutions + deletions + insertions); WER matrices only."""
        self._need_wer()
        return np.asarray(self.stats[..., 0])

    @property
    def ref_words(self) -> Floats:
        """(L,) words in each reference; WER matrices only."""
        self._need_wer()
        return np.asarray(self.stats[:, 0, 1])

    def _need_wer(self) -> None:
        if self.metric.name != "wer":
            raise ValueError(f"this matrix holds {self.metric.name} statistics, not word errors")

    def subset(self, rows: NDArray[np.bool_] | NDArray[np.int64]) -> NbestMatrix:
        return NbestMatrix(self.stats[rows], self.base[rows], self.score[rows],
                           self.num_tokens[rows], self.valid[rows], self.metric)


def nbest_matrix(lists: Sequence[TuningList], metric: Metric | None = None) -> NbestMatrix:
    """Compute every hypothesis's statistics (WER by default) and pad the lists into matrices."""
    metric = metric or WordErrorRate()
    if not lists:
        raise ValueError("no n-best lists to tune on")
    K = max(len(lst.texts) for lst in lists)
    L = len(lists)
    base, score, tokens = (np.zeros((L, K)) for _ in range(3))
    valid = np.zeros((L, K), dtype=np.bool_)
    stats: Floats | None = None
    for i, lst in enumerate(lists):
        n = len(lst.texts)
        if not (len(lst.base_scores) == len(lst.scores) == len(lst.num_tokens) == n) or n == 0:
            raise ValueError(f"list {i}: {n} texts, {len(lst.base_scores)} base scores, "
                             f"{len(lst.scores)} scores, {len(lst.num_tokens)} token counts; "
                             "need one of each per hypothesis, at least one hypothesis")
        unique = list(dict.fromkeys(lst.texts))  # n-best lists repeat texts: count them once
        row = metric.stats(lst.reference, unique)  # (U, S)
        if stats is None:
            stats = np.zeros((L, K, row.shape[1]))
        where = {text: u for u, text in enumerate(unique)}
        stats[i, :n] = row[[where[t] for t in lst.texts]]
        base[i, :n], score[i, :n], tokens[i, :n] = lst.base_scores, lst.scores, lst.num_tokens
        valid[i, :n] = True
    assert stats is not None
    return NbestMatrix(stats, base, score, tokens, valid, metric)


def choose(m: NbestMatrix, weights: Weights) -> NDArray[np.int64]:
    """(L,) index of the hypothesis each list picks; ties go to the earlier one."""
    combined = m.base + weights.lm_weight * m.score + weights.length_bonus * m.num_tokens
    combined = np.where(m.valid, combined, -np.inf)
    return np.asarray(combined.argmax(axis=1), dtype=np.int64)


def corpus_value(m: NbestMatrix, chosen: NDArray[np.int64]) -> float:
    """The corpus metric of the chosen hypotheses (for WER: their errors over all the
    references' words)."""
    picked = m.stats[np.arange(m.lists), chosen]  # (L, S)
    return float(m.metric.corpus(picked.sum(axis=0)))


def oracle_value(m: NbestMatrix) -> float:
    """Each list picks its best hypothesis by the sentence-level metric. Exact for WER; for
    BLEU and chrF a close lower bound of the true corpus oracle, which is not decomposable."""
    sentence = m.metric.corpus(m.stats)  # (L, K)
    sentence = sentence if m.metric.higher_is_better else -sentence
    best = np.where(m.valid, sentence, -np.inf).argmax(axis=1)
    return corpus_value(m, np.asarray(best, dtype=np.int64))


# -- grids ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Grid:
    """The scale-adapted grid: ``length_bonus = lm_weight * bonus_per_token``."""

    lm_weights: tuple[float, ...]
    bonuses_per_token: tuple[float, ...]

    column_name = "length_bonus/lm_weight"

    @property
    def columns(self) -> tuple[float, ...]:
        return self.bonuses_per_token

    def length_bonuses(self) -> Floats:
        """(A, B) the length_bonus at every grid point."""
        lm = np.asarray(self.lm_weights, dtype=np.float64)[:, None]
        return np.asarray(lm * np.asarray(self.bonuses_per_token, dtype=np.float64)[None, :])


@dataclass(frozen=True)
class FixedGrid:
    """Explicit values: every ``lm_weight`` with every ``length_bonus``."""

    lm_weights: tuple[float, ...]
    length_bonus_values: tuple[float, ...]

    column_name = "length_bonus"

    @property
    def columns(self) -> tuple[float, ...]:
        return self.length_bonus_values

    def length_bonuses(self) -> Floats:
        return np.broadcast_to(np.asarray(self.length_bonus_values)[None, :],
                               (len(self.lm_weights), len(self.length_bonus_values)))


AnyGrid = Grid | FixedGrid


@dataclass(frozen=True)
class TuningResult:
    weights: Weights
    metric: str
    value: float
    """The corpus metric with ``weights`` on the lists they were fitted on."""
    baseline: float
    """The corpus metric of the base scores alone (lm_weight = length_bonus = 0)."""
    oracle: float
    """The corpus metric when every list picks its best hypothesis (see :func:`oracle_value`)."""
    lists: int
    grid: AnyGrid
    values: Floats
    """(len(lm_weights), len(columns)) the metric at every grid point."""
    best: tuple[int, int]
    """Row and column of the chosen point."""

    @property
    def grid_points(self) -> int:
        return int(self.values.size)


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


def grid_values(m: NbestMatrix, grid: AnyGrid) -> Floats:
    """(len(lm_weights), len(columns)) the corpus metric at every grid point."""
    bonuses = grid.length_bonuses()  # (A, B)
    rows = np.arange(m.lists)
    summed = np.zeros((*bonuses.shape, m.stats.shape[2]))  # (A, B, S)
    for a, lm in enumerate(grid.lm_weights):
        # (B, L, K): one argmax per bonus value and list, vectorised over both. The bonus is
        # the same product as the chosen Weights carry, so exact ties break alike everywhere.
        bonus = bonuses[a][:, None, None]
        combined = m.base[None] + lm * m.score[None] + bonus * m.num_tokens[None]
        chosen = np.where(m.valid[None], combined, -np.inf).argmax(axis=2)  # (B, L)
        summed[a] = m.stats[rows[None], chosen].sum(axis=1)  # (B, S)
    return m.metric.corpus(summed)


def _neighbourhood_mean(values: Floats) -> Floats:
    """Mean over each cell's 3x3 neighbourhood (edge cells use the neighbours they have)."""
    padded = np.pad(values, 1, constant_values=np.nan)
    stack = np.stack([padded[i:i + values.shape[0], j:j + values.shape[1]]
                      for i in range(3) for j in range(3)])
    return np.asarray(np.nanmean(stack, axis=0))


def grid_search(m: NbestMatrix, grid: AnyGrid | None = None) -> TuningResult:
    """The weights with the best corpus metric on ``m`` (see the module docstring for ties)."""
    grid = grid or default_grid(m)
    values = grid_values(m, grid)
    loss = -values if m.metric.higher_is_better else values
    smooth = _neighbourhood_mean(loss)
    # lexsort: last key first. Best value, then best neighbourhood, then smallest lm_weight.
    lm_index = np.broadcast_to(np.arange(loss.shape[0])[:, None], loss.shape)
    best = int(np.lexsort((lm_index.ravel(), smooth.ravel(), loss.ravel()))[0])
    a, b = (int(i) for i in np.unravel_index(best, loss.shape))
    # + 0.0: a zero weight times a negative bonus would print as -0.
    weights = Weights(lm_weight=grid.lm_weights[a],
                      length_bonus=float(grid.length_bonuses()[a, b]) + 0.0)
    return TuningResult(
        weights=weights,
        metric=m.metric.name,
        value=corpus_value(m, choose(m, weights)),
        baseline=corpus_value(m, choose(m, Weights(0.0, 0.0))),
        oracle=oracle_value(m),
        lists=m.lists,
        grid=grid,
        values=values,
        best=(a, b),
    )


# -- what a fit may be trusted with -----------------------------------------------------------

def held_out(ids: Sequence[str], fraction: float) -> NDArray[np.bool_]:
    """(L,) True for the lists held out of a fit: those whose id's 64-bit BLAKE2b hash falls in
    the top ``fraction`` of its range. Deterministic, and a list's side depends on its id only
    (not on the file's order or on the other lists); at 0.5 the held-out half is the one
    evaluation/sets.py reports on (``in_tuning_half`` is the other)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"a held-out fraction is between 0 and 1 (exclusive), not {fraction}")
    threshold = int((1.0 - fraction) * 2**64)
    return np.array([int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(),
                                    "big") >= threshold for i in ids], dtype=np.bool_)


def electric_matters(m: NbestMatrix, weights: Weights) -> bool:
    """Whether Electric's score changes the choice of any list of ``m``: False for lm_weight 0,
    and for a weight so small that every list picks what it would pick without it (Electric
    switched off in effect)."""
    if weights.lm_weight == 0.0:
        return False
    without = Weights(0.0, weights.length_bonus, weights.rank_prior)
    return bool((choose(m, weights) != choose(m, without)).any())

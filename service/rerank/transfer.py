"""Weights that travel: figures a fit earns on lists it never saw, and a choice that does no harm.

A grid search (service/rerank/tuning.py) reports the metric on the lists it was fitted on, which
flatters it, and on one domain, which says nothing of another. A manifest's defaults are used on
every user's lists, so three figures decide whether weights may become defaults:

- **k-fold held out** (:func:`kfold`): the lists are cut into ``folds`` parts by a hash of their
  id (the same list always falls in the same part); each part is re-ranked with the weights
  fitted on the other parts, and the metric is summed over all parts: every list is scored by
  weights that never saw it. Folds are over lists, never over hypotheses, so no list lends its
  reference to its own fit.
- **cross-domain** (:func:`transfer`): the weights fitted on one dev set, applied to another.
- **the safe choice** (:func:`safe_fit`): one grid point for several domains at once, chosen
  to help the domain it helps least as much as possible (then the mean over domains, then the
  smaller ``lm_weight``). Every grid row with ``lm_weight`` 0 is beam order, so the choice
  never looks worse than beam order on the lists it is chosen on; the k-fold version of the
  same rule says whether that holds on unseen lists, and where it does not on any domain,
  :func:`safe_fit` falls back to ``lm_weight`` 0: the base scores (or rank prior) alone.

Gains are relative to the base scores alone, signed so that positive is better whichever way
the metric points: for WER ``(beam - value) / beam``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.rerank.tuning import (
    AnyGrid,
    Floats,
    NbestMatrix,
    choose,
    corpus_value,
    default_grid,
    grid_search,
    grid_values,
)
from service.scoring import Weights

DEFAULT_FOLDS = 5
BEAM = Weights(0.0, 0.0)
TINY = 1e-12


def fold_of(ids: Sequence[str], folds: int) -> NDArray[np.int64]:
    """(L,) the fold of each list: its id's 64-bit BLAKE2b hash modulo ``folds``; a list's fold
    depends on its id alone, not on the file's order or the other lists."""
    if folds < 2:
        raise ValueError(f"k-fold needs at least 2 folds, not {folds}")
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(i.encode("utf-8"), digest_size=8).digest(), "big")
            % folds
            for i in ids
        ],
        dtype=np.int64,
    )


def relative_gain(value: Floats | float, baseline: float, higher_is_better: bool) -> Floats | float:
    """Relative improvement of ``value`` over ``baseline`` (positive = better). A baseline of 0
    (a dev set the base scores get all right) divides by a tiny number instead, so any change
    there counts as a huge one: moving away from a perfect beam is never "neutral"."""
    change = (value - baseline) / max(abs(baseline), TINY)
    return change if higher_is_better else -change


def beam_value(m: NbestMatrix) -> float:
    """The metric of the base scores alone (lm_weight 0, no length bonus)."""
    return corpus_value(m, choose(m, BEAM))


def gain(m: NbestMatrix, value: float) -> float:
    """Relative improvement of ``value`` over the base scores alone on ``m``."""
    return float(relative_gain(value, beam_value(m), m.metric.higher_is_better))


@dataclass(frozen=True)
class HeldOut:
    """The metric over every list, each re-ranked by weights fitted without its fold."""

    folds: int
    lists: int
    baseline: float
    """The base scores alone on the same lists."""
    value: float
    weights: tuple[Weights, ...]
    """Each fold's fit, fold 0 first."""
    higher_is_better: bool

    @property
    def gain(self) -> float:
        """Relative improvement over the base scores, positive = better."""
        return float(relative_gain(self.value, self.baseline, self.higher_is_better))


Fit = Callable[[Sequence[NbestMatrix]], Weights]
"""A fitting rule: weights from the matrices of one or more domains' training folds."""


def kfold_many(
    domains: Sequence[NbestMatrix],
    ids: Sequence[Sequence[str]],
    fit: Fit,
    folds: int = DEFAULT_FOLDS,
) -> list[HeldOut]:
    """The k-fold held-out figure of ``fit`` on each domain: fold k of every domain is
    re-ranked by the weights ``fit`` chooses on the other folds of all domains together."""
    if len(domains) != len(ids) or not domains:
        raise ValueError(f"{len(domains)} domains and {len(ids)} id lists: need one per domain")
    parts = [fold_of(i, folds) for i, m in zip(ids, domains)]
    for m, part in zip(domains, parts):
        if len(part) != m.lists:
            raise ValueError(f"{len(part)} ids for {m.lists} lists")
        if len(np.unique(part)) < 2:
            raise ValueError(
                f"{m.lists} lists fall into {len(np.unique(part))} of {folds} folds: "
                "k-fold needs lists in at least two folds"
            )
    picked = [np.zeros(m.lists, dtype=np.int64) for m in domains]
    fitted = []
    for k in range(folds):
        train = [m.subset(part != k) for m, part in zip(domains, parts)]
        weights = fit([t for t in train if t.lists])
        fitted.append(weights)
        for m, part, chosen in zip(domains, parts, picked):
            test = part == k
            if test.any():
                chosen[test] = choose(m.subset(test), weights)
    return [
        HeldOut(
            folds=folds,
            lists=m.lists,
            baseline=beam_value(m),
            value=corpus_value(m, chosen),
            weights=tuple(fitted),
            higher_is_better=m.metric.higher_is_better,
        )
        for m, chosen in zip(domains, picked)
    ]


def kfold(
    m: NbestMatrix, ids: Sequence[str], grid: AnyGrid | None = None, folds: int = DEFAULT_FOLDS
) -> HeldOut:
    """The k-fold held-out figure of a plain grid search on one dev set."""
    return kfold_many([m], [ids], lambda ms: grid_search(ms[0], grid).weights, folds)[0]


@dataclass(frozen=True)
class Transfer:
    """Weights fitted on one dev set, applied to another."""

    weights: Weights
    baseline: float
    value: float
    gain: float


def transfer(weights: Weights, other: NbestMatrix) -> Transfer:
    value = corpus_value(other, choose(other, weights))
    return Transfer(weights, beam_value(other), value, gain(other, value))


# -- one choice for several domains -----------------------------------------------------------


def stack(domains: Sequence[NbestMatrix]) -> NbestMatrix:
    """The lists of several matrices in one (padded to the longest list), for a shared grid."""
    if not domains:
        raise ValueError("no n-best lists")
    if len({m.metric.name for m in domains}) != 1:
        raise ValueError("the domains' matrices hold different metrics")
    K = max(m.base.shape[1] for m in domains)

    def pad(a: np.ndarray, fill: float | bool) -> np.ndarray:
        width = [(0, 0), (0, K - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, width, constant_values=fill)

    return NbestMatrix(
        np.concatenate([pad(m.stats, 0.0) for m in domains]),
        np.concatenate([pad(m.base, 0.0) for m in domains]),
        np.concatenate([pad(m.score, 0.0) for m in domains]),
        np.concatenate([pad(m.num_tokens, 0.0) for m in domains]),
        np.concatenate([pad(m.valid, False) for m in domains]),
        domains[0].metric,
    )


@dataclass(frozen=True)
class SafeChoice:
    weights: Weights
    gains: tuple[float, ...]
    """Each domain's gain with ``weights`` on the lists chosen on."""
    grid: AnyGrid


def _gains(m: NbestMatrix, grid: AnyGrid) -> Floats:
    """(A, B) the gain at every grid point."""
    return np.asarray(relative_gain(grid_values(m, grid), beam_value(m), m.metric.higher_is_better))


def safe_point(domains: Sequence[NbestMatrix], grid: AnyGrid | None = None) -> SafeChoice:
    """The grid point with the best worst-domain gain, then the best mean gain, then the
    smallest ``lm_weight`` (see the module docstring). The grid is scaled to all domains'
    scores together unless given."""
    grid = grid or default_grid(stack(domains))
    gains = np.stack([_gains(m, grid) for m in domains])  # (D, A, B)
    worst, mean = gains.min(axis=0), gains.mean(axis=0)
    lm_index = np.broadcast_to(np.arange(worst.shape[0])[:, None], worst.shape)
    best = int(np.lexsort((lm_index.ravel(), -mean.ravel(), -worst.ravel()))[0])
    a, b = (int(i) for i in np.unravel_index(best, worst.shape))
    weights = Weights(grid.lm_weights[a], float(grid.length_bonuses()[a, b]) + 0.0)
    return SafeChoice(weights, tuple(float(g) for g in gains[:, a, b]), grid)


@dataclass(frozen=True)
class SafeFit:
    """What :func:`safe_fit` chose, and why."""

    weights: Weights
    """The defaults to ship: the safe point, or lm_weight 0 where it does not hold up."""
    point: SafeChoice
    """The safe point on all lists of every domain."""
    held_out: tuple[HeldOut, ...]
    """Each domain's k-fold figure of the same rule."""
    fell_back: bool
    """True when some domain's held-out figure is worse than the base scores alone, so the
    weights are lm_weight 0."""


def safe_fit(
    domains: Sequence[NbestMatrix],
    ids: Sequence[Sequence[str]],
    folds: int = DEFAULT_FOLDS,
    grid: AnyGrid | None = None,
) -> SafeFit:
    """Weights for several domains that re-rank no domain worse than its base scores on lists
    they were not chosen on; lm_weight 0 where no such weights are found."""
    grid = grid or default_grid(stack(domains))
    point = safe_point(domains, grid)
    held = kfold_many(domains, ids, lambda ms: safe_point(ms, grid).weights, folds)
    harms = any(h.gain < 0 for h in held)
    zero_point = point.weights.lm_weight == 0.0
    weights = BEAM if harms or zero_point else point.weights
    return SafeFit(weights, point, tuple(held), harms and not zero_point)

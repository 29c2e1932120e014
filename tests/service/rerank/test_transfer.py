"""Weights that travel: k-fold held-out figures, cross-domain figures, the safe choice and its
fall-back to beam order."""

from __future__ import annotations

import random

import numpy as np
import pytest

from service.rerank.transfer import (
    fold_of,
    gain,
    kfold,
    safe_fit,
    safe_point,
    stack,
    transfer,
)
from service.rerank.tuning import TuningList, grid_search, nbest_matrix
from service.scoring import RANK_PRIORS, Weights


def domain(n: int, lm_right: float, seed: int, prefix: str) -> tuple[list[str], list[TuningList]]:
    """``n`` two-hypothesis lists (beam order, log rank prior as base scores); in half of them
    the beam's first choice has one word wrong. The LM scores the right hypothesis higher with
    probability ``lm_right``: above 0.5 Electric helps this domain, below it harms it."""
    rng = random.Random(seed)
    ids, lists = [], []
    for i in range(n):
        words = [rng.choice("abcdefgh") for _ in range(6)]
        wrong = words[:-1] + ["z"]
        beam_wrong = i % 2 == 0
        texts = (
            [" ".join(wrong), " ".join(words)] if beam_wrong else [" ".join(words), " ".join(wrong)]
        )
        right_index = 1 if beam_wrong else 0
        favoured = right_index if rng.random() < lm_right else 1 - right_index
        scores = [-10.0, -10.0]
        scores[favoured] += 1.0 + rng.random()
        ids.append(f"{prefix}-{i}")
        lists.append(
            TuningList(
                " ".join(words), texts, [RANK_PRIORS["log"](r) for r in range(2)], scores, [6, 6]
            )
        )
    return ids, lists


def test_folds_depend_on_the_id_alone() -> None:
    ids = [f"utt-{i}" for i in range(200)]
    folds = fold_of(ids, 5)
    assert set(folds.tolist()) == {0, 1, 2, 3, 4}
    shuffled = ids[::-1]
    assert fold_of(shuffled, 5).tolist() == folds[::-1].tolist()
    with pytest.raises(ValueError, match="at least 2 folds"):
        fold_of(ids, 1)


def test_held_out_figure_is_no_better_than_in_sample() -> None:
    ids, lists = domain(300, lm_right=0.8, seed=0, prefix="a")
    m = nbest_matrix(lists)
    fitted = grid_search(m)
    held = kfold(m, ids, folds=5)
    assert held.lists == 300 and len(held.weights) == 5
    assert held.baseline == pytest.approx(fitted.baseline)
    assert held.value >= fitted.value  # WER: weights that saw no list of a fold do no better
    assert held.gain > 0  # the LM helps this domain, and the fit finds it on unseen lists too


def test_transfer_reports_the_other_domain() -> None:
    _, good = domain(200, lm_right=0.9, seed=1, prefix="a")
    _, bad = domain(200, lm_right=0.1, seed=2, prefix="b")
    fit = grid_search(nbest_matrix(good))
    assert fit.weights.lm_weight > 0
    moved = transfer(fit.weights, nbest_matrix(bad))
    assert moved.value > moved.baseline and moved.gain < 0  # what helps one domain harms this one
    assert moved.gain == pytest.approx(gain(nbest_matrix(bad), moved.value))


def test_safe_fit_falls_back_to_beam_order_where_any_domain_is_harmed() -> None:
    ids_a, a = domain(300, lm_right=0.9, seed=3, prefix="a")
    ids_b, b = domain(300, lm_right=0.1, seed=4, prefix="b")
    ma, mb = nbest_matrix(a), nbest_matrix(b)
    chosen = safe_fit([ma, mb], [ids_a, ids_b])
    assert chosen.weights == Weights(0.0, 0.0)
    # Fitted on either alone, the weights would re-rank the other domain worse.
    assert transfer(grid_search(ma).weights, mb).gain < 0
    assert min(chosen.point.gains) >= 0.0  # never below beam order where it is chosen


def test_safe_fit_keeps_weights_that_help_every_domain() -> None:
    ids_a, a = domain(300, lm_right=0.85, seed=5, prefix="a")
    ids_b, b = domain(200, lm_right=0.75, seed=6, prefix="b")
    ma, mb = nbest_matrix(a), nbest_matrix(b)
    chosen = safe_fit([ma, mb], [ids_a, ids_b])
    assert chosen.weights.lm_weight > 0 and not chosen.fell_back
    assert all(h.gain > 0 for h in chosen.held_out)
    assert all(g > 0 for g in chosen.point.gains)


def test_safe_point_prefers_the_best_worst_domain() -> None:
    _, a = domain(200, lm_right=0.95, seed=7, prefix="a")
    _, b = domain(200, lm_right=0.6, seed=8, prefix="b")
    ma, mb = nbest_matrix(a), nbest_matrix(b)
    point = safe_point([ma, mb])
    alone = grid_search(ma).weights
    # The single-domain fit may do better on a, never better on the worse of the two.
    assert (
        min(point.gains)
        >= min(gain(ma, transfer(alone, ma).value), gain(mb, transfer(alone, mb).value)) - 1e-12
    )


def test_stack_pads_lists_of_different_lengths() -> None:
    one = nbest_matrix([TuningList("a", ["a"], [0.0], [0.0], [1])])
    three = nbest_matrix([TuningList("a", ["a", "b", "c"], [0.0] * 3, [0.0] * 3, [1] * 3)])
    both = stack([one, three])
    assert both.lists == 2 and both.base.shape == (2, 3)
    assert both.valid.tolist() == [[True, False, False], [True, True, True]]
    assert np.array_equal(both.errors[1], three.errors[0])


def test_a_perfect_beam_is_never_moved_neutrally() -> None:
    # Base scores alone get every list right: any weight that changes a choice is harm, not a
    # relative change of 0/0.
    perfect = nbest_matrix([TuningList("a b", ["a b", "a c"], [0.0, -1.0], [-5.0, -1.0], [2, 2])])
    assert gain(perfect, 0.5) < -1e6
    assert gain(perfect, 0.0) == 0.0

"""Fitting lm_weight / length_bonus on n-best lists: WER counting, choice, grid search."""

from __future__ import annotations

import numpy as np
import pytest

from service.rerank.tuning import (
    Grid,
    TuningList,
    choose,
    corpus_value,
    default_grid,
    grid_search,
    nbest_matrix,
    oracle_value,
    word_errors,
)
from service.scoring import Weights


def test_word_errors_count_substitutions_deletions_insertions() -> None:
    assert word_errors("a b c", "a b c") == (0, 3)
    assert word_errors("a b c", "a x c d") == (2, 3)  # one substitution, one insertion
    assert word_errors("a b c", "") == (3, 3)
    assert word_errors("", "a") == (1, 0)


def lst(reference: str, texts: list[str], scores: list[float],
        tokens: list[int] | None = None) -> TuningList:
    return TuningList(reference=reference, texts=texts,
                      base_scores=[-float(r) for r in range(len(texts))], scores=scores,
                      num_tokens=tokens or [len(t.split()) for t in texts])


def test_matrix_pads_ragged_lists_and_counts_reference_words() -> None:
    m = nbest_matrix([lst("a b", ["a b", "a"], [0.0, 0.0]), lst("c", ["d"], [0.0])])
    assert m.errors.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert m.valid.tolist() == [[True, True], [True, False]]
    assert m.ref_words.tolist() == [2.0, 1.0]
    # Padding is never chosen, even where it would look best.
    assert choose(m, Weights(1.0, 0.0)).tolist() == [0, 0]
    assert oracle_value(m) == pytest.approx(1 / 3)


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one of each per hypothesis"):
        nbest_matrix([TuningList("a", ["a", "b"], [0.0], [0.0, 0.0], [1, 1])])
    with pytest.raises(ValueError):
        nbest_matrix([])


def test_ties_go_to_the_earlier_hypothesis() -> None:
    m = nbest_matrix([TuningList("a", ["x", "a"], [0.0, 0.0], [1.0, 1.0], [1, 1])])
    assert choose(m, Weights(1.0, 0.0)).tolist() == [0]


def test_corpus_wer_is_total_errors_over_total_reference_words() -> None:
    m = nbest_matrix([lst("a b c d", ["a b c d", "x"], [0.0, 0.0]),
                      lst("e f", ["e", "e f"], [0.0, 0.0])])
    assert corpus_value(m, np.array([0, 0])) == pytest.approx(1 / 6)
    assert corpus_value(m, np.array([1, 1])) == pytest.approx(4 / 6)


def synthetic(n: int, seed: int, informative: bool = True) -> list[TuningList]:
    """Lists where the reference is at a random rank; an informative LM scores it 2 higher."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        ref = f"w{i} common words here"
        texts = [f"w{i} common words {j}" for j in range(4)]
        right = int(rng.integers(0, 4))
        texts[right] = ref
        scores = rng.normal(0.0, 0.3, size=4) * 10
        if informative:
            scores[right] += 20.0
        out.append(lst(ref, texts, scores.tolist()))
    return out


def test_grid_search_finds_weights_that_follow_an_informative_lm() -> None:
    m = nbest_matrix(synthetic(60, seed=1))
    fit = grid_search(m)
    assert fit.value == pytest.approx(0.0)
    assert fit.baseline > 0.1
    assert fit.oracle == 0.0
    assert fit.weights.lm_weight > 0
    # The fitted weights generalise to fresh lists drawn the same way.
    fresh = nbest_matrix(synthetic(60, seed=2))
    assert corpus_value(fresh, choose(fresh, fit.weights)) == pytest.approx(0.0)


def test_an_uninformative_lm_keeps_the_beam_order() -> None:
    rng = np.random.default_rng(0)
    # The first hypothesis is always right; the LM scores are noise.
    lists = [lst("a b c", ["a b c", "a b x", "a x c"], rng.normal(size=3).tolist())
             for _ in range(30)]
    fit = grid_search(nbest_matrix(lists))
    assert fit.value == fit.baseline == 0.0


def test_length_bonus_is_found_when_the_right_hypotheses_are_longer() -> None:
    # The LM penalises length (about -1 per token), the references are the longest hypotheses.
    lists = []
    for i in range(30):
        ref = f"r{i} b c d"
        texts = [f"r{i} b", ref, f"r{i} c d"]
        tokens = [len(t.split()) for t in texts]
        lists.append(TuningList(ref, texts, [0.0, 0.0, 0.0], [-1.0 * n for n in tokens], tokens))
    fit = grid_search(nbest_matrix(lists))
    assert fit.value == 0.0
    assert fit.weights.length_bonus > fit.weights.lm_weight * 1.0  # outweighs the LM's penalty


def test_default_grid_scales_with_the_scores() -> None:
    small = nbest_matrix(synthetic(20, seed=3))
    scaled = [TuningList(x.reference, x.texts, x.base_scores, [s * 100 for s in x.scores],
                         x.num_tokens) for x in synthetic(20, seed=3)]
    big = nbest_matrix(scaled)
    g_small, g_big = default_grid(small), default_grid(big)
    assert g_small.lm_weights[0] == 0.0
    assert np.allclose(np.array(g_small.lm_weights[1:]) / 100, g_big.lm_weights[1:])
    assert np.allclose(np.array(g_small.bonuses_per_token) * 100, g_big.bonuses_per_token)
    # Same choices at corresponding weights: the fit does not depend on the score's unit.
    w_small, w_big = grid_search(small).weights, grid_search(big).weights
    assert w_small.lm_weight == pytest.approx(w_big.lm_weight * 100)


def test_an_explicit_grid_is_used_as_given() -> None:
    m = nbest_matrix(synthetic(20, seed=4))
    fit = grid_search(m, Grid(lm_weights=(0.0,), bonuses_per_token=(0.0,)))
    assert fit.weights == Weights(0.0, 0.0)
    assert fit.value == fit.baseline
    assert fit.grid_points == 1

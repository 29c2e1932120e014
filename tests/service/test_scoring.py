"""Energies to scores and re-ranking: the conventions of service/scoring.py, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.schemas import Hypothesis, HypothesisList, SentenceScore, unique_texts
from service.scoring import (
    EMPTY,
    Weights,
    base_scores,
    rank,
    resolve_weights,
    sentence_score,
)
from service.tokenization import Encoded


def encoded(n_tokens: int) -> Encoded:
    ids = np.arange(n_tokens + 2, dtype=np.int64)
    scored = np.ones(n_tokens + 2, dtype=np.bool_)
    scored[[0, -1]] = False
    return Encoded(ids=ids, scored=scored, tokens=[f"t{i}" for i in range(n_tokens)],
                   offsets=[(i, i + 1) for i in range(n_tokens)], truncated=False)


def score_of(value: float, num_tokens: int) -> SentenceScore:
    return SentenceScore(score=value, num_tokens=num_tokens, tokens=[], energies=[], offsets=[],
                         truncated=False)


def test_score_is_minus_the_sum_over_non_special_tokens() -> None:
    energies = np.array([100.0, 0.5, -0.25, 1.0, 100.0], dtype=np.float32)  # specials: 100
    s = sentence_score(encoded(3), energies)
    assert s.score == pytest.approx(-1.25)
    assert s.energies == [0.5, -0.25, 1.0]
    assert s.num_tokens == 3 and s.tokens == ["t0", "t1", "t2"]


def test_energies_must_match_the_input() -> None:
    with pytest.raises(ValueError):
        sentence_score(encoded(3), np.zeros(4, dtype=np.float32))


def test_rank_combines_sorts_and_keeps_indices() -> None:
    scores = {"a": score_of(-5.0, 2), "b": score_of(-1.0, 4), "": EMPTY}
    hyps: list[str | Hypothesis] = [Hypothesis(text="a", score=-1.0), "b",
                                    Hypothesis(text="", score=-4.0)]
    ranked = rank(hyps, scores, Weights(lm_weight=0.5, length_bonus=0.25))
    # a: -1 + 0.5*-5 + 0.25*2 = -3.0 ; b: 0 + 0.5*-1 + 1.0 = 0.5 ; "": -4
    assert [h.index for h in ranked] == [1, 0, 2]
    assert [h.combined for h in ranked] == pytest.approx([0.5, -3.0, -4.0])
    assert ranked[2].num_tokens == 0 and ranked[2].score == 0.0
    assert ranked[1].base_score == -1.0


def test_ties_keep_request_order() -> None:
    scores = {"x": score_of(-1.0, 1), "y": score_of(-1.0, 1)}
    assert [h.index for h in rank(["y", "x", "y"], scores, Weights(1.0, 0.0))] == [0, 1, 2]


def test_duplicates_are_scored_once() -> None:
    lists = [HypothesisList(hypotheses=["a", "b", Hypothesis(text="a", score=2.0)]),
             HypothesisList(hypotheses=["b", "", "c"])]
    assert unique_texts(lists) == ["a", "b", "", "c"]


def test_one_rule_for_weights_and_prior() -> None:
    manifest = Weights.of_section({"lm_weight": 0.3, "length_bonus": -0.2, "rank_prior": "log"})
    # Nothing given: exactly the fitted combination.
    assert resolve_weights(manifest) == Weights(0.3, -0.2, "log")
    # Each value given wins on its own; the others stay the manifest's.
    assert resolve_weights(manifest, rank_prior="none") == Weights(0.3, -0.2, "none")
    assert resolve_weights(manifest, lm_weight=1.0) == Weights(1.0, -0.2, "log")
    assert resolve_weights(manifest, 0.0, 0.0, "linear") == Weights(0.0, 0.0, "linear")
    # A section that names no prior (an older manifest, no section at all): none.
    assert Weights.of_section({"lm_weight": 0.3, "length_bonus": 0.0}).rank_prior == "none"
    assert Weights.of_section(None) == Weights(1.0, 0.0, "none")
    with pytest.raises(ValueError, match="rank prior 'cubic' is not one of none, linear, log"):
        resolve_weights(manifest, rank_prior="cubic")


def test_the_prior_applies_only_to_lists_without_scores() -> None:
    assert base_scores([None, None, None], "log") == pytest.approx(
        [0.0, -math.log(2), -math.log(3)])
    assert base_scores([None, None], "linear") == [0.0, -1.0]
    assert base_scores([None, -2.0], "log") == [0.0, -2.0]  # some scored: none counts 0
    scores = {"a": score_of(-1.0, 1), "b": score_of(-1.0, 1)}
    log = Weights(1.0, 0.0, "log")
    # Strings and objects without "score" carry none: the prior applies, as to the CLI's
    # {"text"} lines.
    unscored = rank(["a", Hypothesis(text="b")], scores, log)
    assert {h.index: h.base_score for h in unscored} == pytest.approx({0: 0.0, 1: -math.log(2)})
    scored = rank(["a", Hypothesis(text="b", score=0.0)], scores, log)
    assert [h.base_score for h in scored] == [0.0, 0.0]

"""Energies -> sentence scores, and sentence scores -> re-ranked n-best lists. Pure functions.

A sentence's score is ``-Σ_t E_t`` over its scored tokens (special tokens never count): an
estimate of its pseudo-log-likelihood from one forward pass (Clark et al. 2020, section 5).
Re-ranking combines it with the recogniser's own score as in the paper's rescoring experiments:
``combined = base_score + lm_weight * score + length_bonus * num_tokens``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.schemas import Hypothesis, HypothesisList, RankedHypothesis, SentenceScore
from service.tokenization import Encoded

EMPTY = SentenceScore(score=0.0, num_tokens=0, tokens=[], energies=[], offsets=[],
                      truncated=False)
"""What a text without tokens scores: nothing to sum, so 0 (an empty ASR hypothesis)."""


@dataclass(frozen=True)
class Weights:
    lm_weight: float
    length_bonus: float
    rank_prior: str = "none"
    """Base scores for a list that has none (RANK_PRIORS): what the weights were fitted with."""


RANK_PRIORS: dict[str, Callable[[int], float]] = {
    "none": lambda rank: 0.0,
    # 0.0 - x, not -x: the top hypothesis gets 0.0, not the -0.0 that JSON would show.
    "linear": lambda rank: 0.0 - rank,
    "log": lambda rank: 0.0 - math.log1p(rank),
}
"""Base scores for lists without any: a function of the hypothesis's position (from 0), for
n-best lists that arrive in the recogniser's order but without its scores."""


def sentence_score(encoded: Encoded, energies: NDArray[np.float32]) -> SentenceScore:
    """``energies``: (T,) the engine's row for this sentence, special positions included."""
    if energies.shape != encoded.ids.shape:
        raise ValueError(f"energies {energies.shape} do not match the input {encoded.ids.shape}")
    scored = energies[encoded.scored]  # (num_tokens,)
    return SentenceScore(
        # float64 accumulation: the sum must not depend on how the row was batched.
        score=-float(scored.sum(dtype=np.float64)),
        num_tokens=encoded.num_tokens,
        tokens=encoded.tokens,
        energies=scored.tolist(),
        offsets=encoded.offsets,
        truncated=encoded.truncated,
    )


def as_pair(hypothesis: str | Hypothesis) -> tuple[str, float]:
    """(text, base_score); a bare string has no base score."""
    if isinstance(hypothesis, str):
        return hypothesis, 0.0
    return hypothesis.text, hypothesis.score


def unique_texts(lists: Sequence[HypothesisList]) -> list[str]:
    """Every distinct hypothesis text, first occurrence first: duplicates are scored once
    (n-best lists repeat strings that differ only in their alignment or segmentation)."""
    return list(dict.fromkeys(as_pair(h)[0] for lst in lists for h in lst.hypotheses))


def rank(hypotheses: Sequence[str | Hypothesis], scores: Mapping[str, SentenceScore],
         weights: Weights, prior: str = "none") -> list[RankedHypothesis]:
    """The list sorted by ``combined``, best first; ties keep the request's order.

    A list of plain strings only takes its base scores from ``prior`` (RANK_PRIORS) by
    position; where any hypothesis carries a score, one without counts 0.
    """
    plain = all(isinstance(h, str) for h in hypotheses)
    ranked = []
    for index, hyp in enumerate(hypotheses):
        text, base = as_pair(hyp)
        if plain:
            base = RANK_PRIORS[prior](index)
        s = scores[text]
        combined = base + weights.lm_weight * s.score + weights.length_bonus * s.num_tokens
        ranked.append(RankedHypothesis(index=index, text=text, score=s.score, base_score=base,
                                       combined=combined, num_tokens=s.num_tokens))
    ranked.sort(key=lambda h: -h.combined)
    return ranked

"""Energies -> sentence scores, and sentence scores -> re-ranked n-best lists. Pure functions.

A sentence's score is ``-Σ_t E_t`` over its scored tokens (special tokens never count): an
estimate of its pseudo-log-likelihood from one forward pass (Clark et al. 2020, section 5).
Re-ranking combines it with the recogniser's own score as in the paper's rescoring experiments:
``combined = base_score + lm_weight * score + length_bonus * num_tokens``.

Which weights and rank prior a re-ranking uses is decided in one place, :func:`resolve_weights`
(for /v1/rerank, ``electric rerank`` in process or with --url, and ``electric tune``), and which
base scores a list gets in another, :func:`base_scores`.

Results are plain dataclasses (:class:`Scored`, :class:`Ranked`) and nothing here knows HTTP:
the handlers show them as the response models of service/schemas.py, the CLI writes them as it
likes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from service.artifact import Manifest, RankPrior
from service.tokenization import Encoded


@dataclass(frozen=True, slots=True)
class Scored:
    """One text's score and what it is made of; the HTTP layer shows it as SentenceScore."""

    score: float
    """-Σ E_t over the scored tokens; higher is better."""
    num_tokens: int
    """Scored tokens ([CLS], [SEP] excluded)."""
    tokens: list[str]
    energies: list[float]
    """One per scored token; lower fits its context better."""
    offsets: list[tuple[int, int]]
    """[start, end) character span of each scored token in the text."""
    truncated: bool


EMPTY = Scored(score=0.0, num_tokens=0, tokens=[], energies=[], offsets=[], truncated=False)
"""What a text without tokens scores: nothing to sum, so 0 (an empty ASR hypothesis)."""


@dataclass(frozen=True, slots=True)
class Ranked:
    """One hypothesis of a re-ranked list; the HTTP layer shows it as RankedHypothesis."""

    index: int
    """Position in the list as given."""
    text: str
    score: float
    base_score: float
    combined: float
    """base_score + lm_weight * score + length_bonus * num_tokens."""
    num_tokens: int


class Candidate(Protocol):
    """A hypothesis with the base score it was given, if any (a request's object form)."""

    @property
    def text(self) -> str: ...

    @property
    def given_score(self) -> float | None:
        """None: it carries no base score of its own, so a rank prior may stand in."""
        ...


@dataclass(frozen=True)
class Weights:
    lm_weight: float
    length_bonus: float
    rank_prior: RankPrior = "none"
    """Base scores for a list that has none (RANK_PRIORS): what the weights were fitted with."""

    @classmethod
    def of_section(cls, section: Mapping[str, Any] | None) -> Weights:
        """A ``rerank`` section as a dict, or a weights file from ``electric tune --out``;
        what it leaves out takes RerankDefaults' defaults."""
        section = section or {}
        return cls(float(section.get("lm_weight", 1.0)),
                   float(section.get("length_bonus", 0.0)),
                   rank_prior_named(section.get("rank_prior") or "none"))

    @classmethod
    def of_manifest(cls, manifest: Manifest | Mapping[str, Any]) -> Weights:
        """The weights and prior a model's manifest carries, loaded or as GET /v1/model shows
        it: the defaults of :func:`resolve_weights` for the service, every CLI command and a
        client of a remote service alike."""
        if isinstance(manifest, Manifest):
            return cls.of_section(manifest.rerank.model_dump())
        return cls.of_section(manifest.get("rerank"))


RANK_PRIORS: dict[RankPrior, Callable[[int], float]] = {
    "none": lambda rank: 0.0,
    # 0.0 - x, not -x: the top hypothesis gets 0.0, not the -0.0 that JSON would show.
    "linear": lambda rank: 0.0 - rank,
    "log": lambda rank: 0.0 - math.log1p(rank),
}
"""Base scores for lists without any: a function of the hypothesis's position (from 0), for
n-best lists that arrive in the recogniser's order but without its scores."""


def rank_prior_named(name: object) -> RankPrior:
    if name not in RANK_PRIORS:
        raise ValueError(f"rank prior {name!r} is not one of {', '.join(RANK_PRIORS)}")
    return name


def resolve_weights(defaults: Weights, lm_weight: float | None = None,
                    length_bonus: float | None = None,
                    rank_prior: str | None = None) -> Weights:
    """The one rule for what a re-ranking uses (/v1/rerank, ``electric rerank``, ``electric
    tune``): each value the request or command line gives, else the defaults' (the manifest's
    ``rerank`` section, or a ``--weights`` file standing in for it as a whole), whose prior is
    "none" where they name none. The weights were fitted together with that prior, so a request
    that gives nothing gets exactly the fitted combination."""
    return Weights(defaults.lm_weight if lm_weight is None else lm_weight,
                   defaults.length_bonus if length_bonus is None else length_bonus,
                   defaults.rank_prior if rank_prior is None else rank_prior_named(rank_prior))


def base_scores(given: Sequence[float | None], prior: RankPrior) -> list[float]:
    """A list's base scores from its hypotheses' own (None: the hypothesis has none): the one
    place a rank prior enters a combined score, for /v1/rerank, ``electric rerank``, ``electric
    tune`` and the evaluation alike.

    A rank prior stands in for a recogniser's scores that were lost, so it applies only to a
    list where no hypothesis has one; in a list where some do, one without counts 0, as
    DESIGN's formula says (a prior by position and real scores are not on one scale).
    """
    if any(g is not None for g in given):
        return [0.0 if g is None else g for g in given]
    return [RANK_PRIORS[prior](r) for r in range(len(given))]


def sentence_score(encoded: Encoded, energies: NDArray[np.float32]) -> Scored:
    """``energies``: (T,) the engine's row for this sentence, special positions included."""
    if energies.shape != encoded.ids.shape:
        raise ValueError(f"energies {energies.shape} do not match the input {encoded.ids.shape}")
    scored = energies[encoded.scored]  # (num_tokens,)
    return Scored(
        # float64 accumulation: the sum must not depend on how the row was batched.
        score=-float(scored.sum(dtype=np.float64)),
        num_tokens=encoded.num_tokens,
        tokens=encoded.tokens,
        energies=scored.tolist(),
        offsets=encoded.offsets,
        truncated=encoded.truncated,
    )


def rank(hypotheses: Sequence[str | Candidate], scores: Mapping[str, Scored],
         weights: Weights) -> list[Ranked]:
    """The list sorted by ``combined``, best first; ties keep the given order. A plain string
    carries no base score; base scores as :func:`base_scores` gives them, with
    ``weights.rank_prior``."""
    texts = [h if isinstance(h, str) else h.text for h in hypotheses]
    given = [None if isinstance(h, str) else h.given_score for h in hypotheses]
    ranked = []
    for index, (text, base) in enumerate(zip(texts, base_scores(given, weights.rank_prior))):
        s = scores[text]
        combined = base + weights.lm_weight * s.score + weights.length_bonus * s.num_tokens
        ranked.append(Ranked(index=index, text=text, score=s.score, base_score=base,
                             combined=combined, num_tokens=s.num_tokens))
    ranked.sort(key=lambda h: -h.combined)
    return ranked

"""``electric.Scorer``: score and re-rank text from Python, in process, with no server.

    from electric import Scorer

    scorer = Scorer.load()                      # the embedded models/electric-minilm
    [result] = scorer.score(["the cat sat on the mat"])
    ranked = scorer.rerank(["i scream for ice cream", "eye scream four ice cream"])

It is the CLI's in-process scorer (service/local.py ``InProcessScorer``: the service's
tokenizer, ONNX engine and batch policy) behind the checks a caller in a notebook needs, and
its maths is service/scoring.py's, the one that /v1/score, /v1/rerank and the commands use: a
score here is ``electric score``'s, a ranking ``electric rerank``'s and the service's.

Results are the frozen dataclasses of service/scoring.py, :class:`~service.scoring.Scored` per
text and :class:`~service.scoring.Ranked` per hypothesis. Bad input raises ``ValueError``
(``TypeError`` for a value of the wrong type) whose message names the value and the limit; an
artifact that cannot be loaded raises :class:`~service.artifact.ArtifactError`.
docs/PYTHON.md is the user's page.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self, get_args

from service.local import InProcessScorer, TextRefused, TextTooLong, TextTooManyChars
from service.schemas import MAX_BASE_SCORE, MAX_LENGTH_BONUS, MAX_LM_WEIGHT
from service.scoring import Candidate, Ranked, Scored, Weights, rank, resolve_weights
from service.settings import VariantChoice, default_artifact

VARIANTS: tuple[VariantChoice, ...] = get_args(VariantChoice)
"""What ``variant`` may name: ``auto`` (int8 on CPU, fp16 on a CUDA GPU, each falling back to
what the artifact has) or one variant, which the artifact must hold."""

# Python strings may hold lone surrogates (a broken "\\ud800" escape in JSON read leniently);
# the tokenizer refuses them with a TypeError that names neither the text nor the reason.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class _Given:
    """A hypothesis with a base score, or None where it has none (a :class:`Candidate`)."""

    text: str
    given_score: float | None


class Scorer:
    """One artifact loaded in this process; make it with :meth:`load`."""

    def __init__(self, local: InProcessScorer):
        self._local = local

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, variant: str = "auto",
             threads: int = 0) -> Scorer:
        """Load the artifact folder at ``path`` (None: the embedded models/electric-minilm).

        ``variant``: one of :data:`VARIANTS`. ``threads``: ONNX Runtime intra-op threads, 0 for
        the CPU budget (the container's quota, else one per physical core). The ONNX file's
        sha256 is checked against the manifest, as the service checks it.
        """
        if variant not in VARIANTS:
            raise ValueError(f"variant {variant!r} is not one of {', '.join(VARIANTS)}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads is {threads!r}; it must be a whole number, at least 0 "
                             "(0: all the cores this process may use)")
        folder = default_artifact() if path is None else Path(path)
        return cls(InProcessScorer(folder, variant, threads))

    @property
    def name(self) -> str:
        """The model's name, as its manifest gives it."""
        return self._local.name

    @property
    def variant(self) -> str:
        """The variant loaded (what ``auto`` chose)."""
        return self._local.engine.variant

    @property
    def providers(self) -> list[str]:
        """ONNX Runtime's execution providers for it, the first one running it."""
        return list(self._local.engine.providers)

    @property
    def max_tokens(self) -> int:
        """Most tokens a text may have ([CLS] and [SEP] aside) unless ``truncate`` cuts it."""
        return self._local.tokenizer.max_tokens

    def defaults(self) -> Weights:
        """The re-ranking weights and rank prior of the manifest (``electric tune`` fits them):
        what :meth:`rerank` uses for each value it is not given."""
        return self._local.defaults()

    def score(self, texts: Sequence[str], truncate: bool = False) -> list[Scored]:
        """One :class:`Scored` per text, in order: ``score = -Σ_t E_t`` over its tokens, with
        its tokens, their energies and character offsets into the text.

        A blank text scores 0 with no tokens. A text with more than :attr:`max_tokens` tokens
        is an error, unless ``truncate``: then its first ones are scored and ``truncated`` is
        set. Texts are batched as the service batches them, so the scores do not depend on
        which texts are scored together.
        """
        checked = _texts("texts", texts)
        return self._score("texts", checked, checked, truncate)

    def rerank(self, hypotheses: Sequence[str],
               base_scores: Sequence[float | None] | None = None,
               lm_weight: float | None = None, length_bonus: float | None = None,
               rank_prior: str | None = None, truncate: bool = False) -> list[Ranked]:
        """One n-best list, best first: every hypothesis with its ``index`` in the list given,
        sorted by ``combined = base_score + lm_weight * score + length_bonus * num_tokens``
        (ties keep the given order).

        ``base_scores``: the recogniser's or translator's own log-domain scores, one per
        hypothesis (None for one without). A value not given (None) is the manifest's
        (:meth:`defaults`). ``rank_prior`` (none, linear, log) gives the base scores of a list
        without any, from each hypothesis's position: the beam order as evidence. An empty
        hypothesis is valid: a recogniser may output nothing.
        """
        texts = _texts("hypotheses", hypotheses)
        if not texts:
            raise ValueError("hypotheses is empty; a list to re-rank needs at least 1 "
                             "hypothesis")
        weights = resolve_weights(
            self.defaults(), _number("lm_weight", lm_weight, 0.0, MAX_LM_WEIGHT),
            _number("length_bonus", length_bonus, -MAX_LENGTH_BONUS, MAX_LENGTH_BONUS),
            rank_prior)
        candidates: list[str | Candidate] = list(texts)
        if base_scores is not None:
            candidates = [_Given(t, g) for t, g in zip(texts, _given(base_scores, len(texts)))]
        distinct = list(dict.fromkeys(texts))  # n-best lists repeat strings: score each once
        scores = dict(zip(distinct, self._score("hypotheses", distinct, texts, truncate)))
        return rank(candidates, scores, weights)

    def _score(self, what: str, texts: list[str], given: list[str],
               truncate: bool) -> list[Scored]:
        """Score ``texts``, naming a refused one by its place in ``given``, the caller's
        ``what``."""
        try:
            return list(self._local.stream(texts, truncate))
        except TextRefused as exc:
            raise ValueError(f"{what}[{given.index(exc.text)}] {_refusal(exc)}") from None

    def close(self) -> None:
        self._local.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Scorer(name={self.name!r}, variant={self.variant!r}, "
                f"providers={self.providers!r})")


def _refusal(exc: TextRefused) -> str:
    """Why a text was refused, with the keyword argument that would let it through."""
    if isinstance(exc, TextTooLong):
        return (f"has {exc.num_tokens} tokens, the model scores at most {exc.max_tokens}; "
                "pass truncate=True to score its first ones")
    if isinstance(exc, TextTooManyChars):
        return (f"has {exc.chars} characters; at most {exc.max_chars} are tokenized, far more "
                "than the model scores; pass truncate=True to score its beginning")
    return str(exc)


def _texts(what: str, texts: Sequence[str]) -> list[str]:
    """``texts`` as a list of strings, or the error naming the one that is not."""
    if isinstance(texts, str):
        raise TypeError(f"{what} is one string; pass a list of strings, e.g. [text]")
    try:
        out = list(texts)
    except TypeError:
        raise TypeError(f"{what} is a {type(texts).__name__}; pass a list of strings") from None
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"{what}[{i}] is a {type(text).__name__}, not a str")
        bad = _SURROGATE.search(text)
        if bad is not None:
            raise ValueError(f"{what}[{i}] holds a lone surrogate U+{ord(bad.group()):04X} at "
                             f"character {bad.start()}; text must be valid Unicode")
    return out


def _number(what: str, value: object, low: float, high: float) -> float | None:
    """A finite number in [low, high] as a float; None stays None (the manifest's value)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} is a {type(value).__name__}; it must be a number")
    number = float(value)
    if not (math.isfinite(number) and low <= number <= high):
        raise ValueError(f"{what} is {number!r}; it must be a finite number in "
                         f"[{low:g}, {high:g}]")
    return number


def _given(base_scores: Sequence[float | None], n: int) -> list[float | None]:
    """One checked base score (or None) per hypothesis."""
    if isinstance(base_scores, str):
        raise TypeError("base_scores is a str; pass a list of numbers, one per hypothesis")
    scores = list(base_scores)
    if len(scores) != n:
        raise ValueError(f"base_scores has {len(scores)} values for {n} hypotheses; give one "
                         "per hypothesis (None for one without)")
    return [_number(f"base_scores[{i}]", s, -MAX_BASE_SCORE, MAX_BASE_SCORE)
            for i, s in enumerate(scores)]

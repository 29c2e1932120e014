"""Fakes for the n-best tests: hand-made rankings and a scorer that needs no model."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from service.schemas import RankedHypothesis, SentenceScore
from service.scoring import Weights


def ranking(order: Sequence[int], texts: Sequence[str] | None = None) -> list[RankedHypothesis]:
    """Hypotheses ``order[0]`` best, ``order[1]`` next...; scores that make that order."""
    out = []
    for place, index in enumerate(order):
        text = texts[index] if texts else f"hyp {index}"
        out.append(RankedHypothesis(index=index, text=text, score=-1.5 * (place + 1),
                                    base_score=0.0, combined=-2.0 * place - 0.25,
                                    num_tokens=index + 1))
    return out


class DictScorer:
    """Scores from a table (default: minus the number of words); counts what it was asked."""

    name = "dict-scorer"

    def __init__(self, table: dict[str, float] | None = None, weights: Weights | None = None):
        self.table = table or {}
        self.weights = weights or Weights(1.0, 0.0)
        self.asked: list[str] = []

    def defaults(self) -> Weights:
        return self.weights

    def stream(self, texts: Iterable[str], truncate: bool = False) -> Iterator[SentenceScore]:
        for text in texts:
            self.asked.append(text)
            words = text.split()
            score = self.table.get(text, -float(len(words)))
            yield SentenceScore(score=score, num_tokens=len(words), tokens=words,
                                energies=[-score / max(len(words), 1)] * len(words),
                                offsets=[(0, 0)] * len(words), truncated=False)

    def close(self) -> None:
        pass

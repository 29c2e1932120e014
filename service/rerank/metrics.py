"""Corpus metrics that re-ranking is tuned and measured with, from additive sentence statistics.

- ``wer`` (ASR): total word errors / total reference words, as ``jiwer`` counts them (no text
  normalisation);
- ``bleu`` and ``chrf`` (MT): sacrebleu's corpus BLEU and chrF with their default settings.

Each is a function of statistics that add up over sentences (word errors and reference words;
n-gram matches and totals; character n-gram matches), so a hypothesis's statistics are computed
once and any choice of hypotheses is scored by a sum. The corpus BLEU and chrF of summed
statistics are what sacrebleu's ``corpus_score`` computes; it exposes that step only as
``_compute_score_from_stats`` (sacrebleu 2.x). sacrebleu is imported only when asked for, so a
serving install without it still tunes on WER.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import jiwer
import numpy as np
from numpy.typing import NDArray

Floats = NDArray[np.float64]


class Metric(Protocol):
    name: str
    higher_is_better: bool

    def stats(self, reference: str, hypotheses: Sequence[str]) -> Floats:
        """(H, S) additive statistics of each hypothesis against the reference."""
        ...

    def corpus(self, stats: Floats) -> Floats:
        """(..., S) summed statistics -> (...) corpus values."""
        ...


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(word errors, reference words) of one hypothesis, as jiwer counts them."""
    out = jiwer.process_words(reference, hypothesis)
    errors = int(out.substitutions + out.deletions + out.insertions)
    return errors, int(out.hits + out.substitutions + out.deletions)


class WordErrorRate:
    name = "wer"
    higher_is_better = False

    def stats(self, reference: str, hypotheses: Sequence[str]) -> Floats:
        return np.array([word_errors(reference, h) for h in hypotheses], dtype=np.float64)

    def corpus(self, stats: Floats) -> Floats:
        return np.asarray(stats[..., 0] / np.maximum(stats[..., 1], 1.0))


class _Sacrebleu:
    """A sacrebleu metric over summed sentence statistics (see the module docstring)."""

    name = ""
    higher_is_better = True

    def __init__(self, metric: Any):
        self._metric = metric

    def stats(self, reference: str, hypotheses: Sequence[str]) -> Floats:
        raw = self._metric._extract_corpus_statistics(
            list(hypotheses), [[reference] * len(hypotheses)])
        return np.asarray(raw, dtype=np.float64).reshape(len(hypotheses), -1)

    def corpus(self, stats: Floats) -> Floats:
        flat = stats.reshape(-1, stats.shape[-1])
        values = [float(self._metric._compute_score_from_stats([round(x) for x in row]).score)
                  for row in flat]
        return np.asarray(values, dtype=np.float64).reshape(stats.shape[:-1])


class Bleu(_Sacrebleu):
    name = "bleu"

    def __init__(self) -> None:
        from sacrebleu.metrics.bleu import BLEU
        super().__init__(BLEU())


class Chrf(_Sacrebleu):
    name = "chrf"

    def __init__(self) -> None:
        from sacrebleu.metrics.chrf import CHRF
        super().__init__(CHRF())


METRICS = ("wer", "bleu", "chrf")


def metric_named(name: str) -> Metric:
    """``wer``, ``bleu`` or ``chrf``; the MT metrics need sacrebleu (the ``mt`` extra): without
    it the ModuleNotFoundError propagates, and the CLI turns it into its one-line message."""
    if name == "wer":
        return WordErrorRate()
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return Bleu() if name == "bleu" else Chrf()


def format_value(metric: str, value: float) -> str:
    """WER as a percentage; BLEU and chrF on sacrebleu's 0-100 scale."""
    return f"{100 * value:.2f}%" if metric == "wer" else f"{value:.2f}"

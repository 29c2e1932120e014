"""Kaldi n-best: ``utt-N word word ...`` lines, scores in separate ``utt-N value`` files.

This is what ``lattice-to-nbest | nbest-to-linear`` leaves after ``int2sym``: a text file
whose keys are the utterance id and the hypothesis's rank joined by ``-`` (``utt1-1``,
``utt1-2``...), and one file per score (``ac_cost``, ``lm_cost``...) with the same keys. Kaldi
scores are *costs* (negative log-likelihoods, lower = better), so each score file comes with a
weight and ``base_score = Σ weight × value``: ``lm_cost:-1`` and ``ac_cost:-0.083`` (an
acoustic scale of 1/12) give Kaldi's own ranking back. The default weight is -1.

Re-ranking re-orders each utterance's lines within the places they held, best first; keys stay
as they are, so the score files still join with the output. Blank lines are kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.rerank.nbest.document import (
    Candidate,
    LineDocument,
    NbestFormatError,
    body,
    content_lines,
    parse_score,
    read_text,
    split_lines,
)

KEY = re.compile(r"(.+)-([0-9]+)")


@dataclass(frozen=True)
class ScoreFile:
    path: Path
    weight: float = -1.0

    @classmethod
    def parse(cls, spec: str) -> ScoreFile:
        """``PATH`` or ``PATH:WEIGHT``."""
        path, sep, weight = spec.rpartition(":")
        if sep:
            try:
                return cls(Path(path), float(weight))
            except ValueError:
                pass
        return cls(Path(spec))


@dataclass
class KaldiDocument(LineDocument):
    keys: dict[str, int] = field(default_factory=dict)
    """Hypothesis key -> its line index."""


def _read_scores(score_file: ScoreFile) -> tuple[str, dict[str, tuple[float, int]]]:
    name, text = read_text(score_file.path)
    values: dict[str, tuple[float, int]] = {}
    for at, content in content_lines(split_lines(text)):
        number = at + 1
        parts = content.split()
        if len(parts) != 2:
            raise NbestFormatError(name, number, f"expected 'key value', found {len(parts)} "
                                                 "fields")
        key, value = parts
        if key in values:
            raise NbestFormatError(name, number, f"a second score for {key!r}")
        values[key] = (parse_score(name, number, value, "score"), number)
    return name, values


def _split(content: str) -> tuple[str, str]:
    """(key, words) of a text line; the words may be none (an empty hypothesis)."""
    parts = content.split(maxsplit=1)
    return parts[0], parts[1].strip() if len(parts) == 2 else ""


def parse(name: str, text: str, score_files: Sequence[ScoreFile] = ()) -> KaldiDocument:
    doc = KaldiDocument(name, split_lines(text))
    for at, content in content_lines(doc.lines):
        number = at + 1
        key, words = _split(content)
        match = KEY.fullmatch(key)
        if not match:
            raise NbestFormatError(name, number, f"key {key!r} does not end in -N, the "
                                                 "hypothesis's rank (utt-1, utt-2, ...)")
        if key in doc.keys:
            raise NbestFormatError(name, number, f"key {key!r} appears twice (first on line "
                                                 f"{doc.keys[key] + 1})")
        doc.keys[key] = at
        base = 0.0 if score_files else None
        doc.add(match.group(1), Candidate(words, base, number), at)
    for score_file in score_files:
        _add_scores(doc, score_file)
    return doc


def _add_scores(doc: KaldiDocument, score_file: ScoreFile) -> None:
    name, values = _read_scores(score_file)
    for key, (_, number) in values.items():
        if key not in doc.keys:
            raise NbestFormatError(name, number, f"{key!r} is not a hypothesis in {doc.name}")
    for lst, blocks in zip(doc.lists, doc.blocks):
        for cand, (at, _) in zip(lst.candidates, blocks):
            key = _split(body(doc.lines[at]))[0]
            if key not in values:
                raise NbestFormatError(doc.name, at + 1, f"{key!r} has no score in {name}")
            assert cand.base_score is not None
            cand.base_score += score_file.weight * values[key][0]

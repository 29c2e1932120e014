"""Moses and Marian n-best lists: ``id ||| hypothesis ||| features ||| total``.

    0 ||| the cat sat ||| LM0= -12.5 TM0= -3.1 WordPenalty0= -3 ||| -8.93
    0 ||| a cat sat ||| F0= -2.1 F1= -1.4 ||| -1.75            (Marian writes F0=, F1=...)

``total`` is the decoder's weighted sum of the features (log domain, higher = better) and is the
base score. Fields after the total (word alignments, for example) are kept.

Re-ranking appends an ``Electric= <score>`` feature (Electric's raw score, -Σ energies, in
nats) and rewrites the total as ``total + lm_weight × score + length_bonus × num_tokens``, the
``combined`` of service/scoring.py, where ``num_tokens`` is the Electric tokenizer's count. The
lines of each sentence are re-ordered within the places they held by that new total, best
first; ``id`` stays the sentence number. An ``Electric=`` feature already on a line (a second
pass) has its value replaced instead of repeated. Blank lines are kept.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from service.rerank.nbest.document import (
    Candidate,
    LineDocument,
    NbestFormatError,
    Ranking,
    body,
    content_lines,
    ending,
    number_text,
    parse_score,
    permute_blocks,
    split_lines,
)
from service.schemas import RankedHypothesis

SEP = "|||"
FEATURE = "Electric="
_OLD_FEATURE = re.compile(r"(?<!\S)Electric=\s+\S+")


class MosesDocument(LineDocument):
    def render(self, rankings: Sequence[Ranking] | None = None) -> str:
        return permute_blocks(self.lines, self.blocks, rankings, _edit)


def _replace_number(field_text: str, value: float) -> str:
    """The field with its number replaced, its surrounding spaces kept."""
    core = field_text.strip()
    lead = field_text[:len(field_text) - len(field_text.lstrip())]
    trail = field_text[len(lead) + len(core):]
    return lead + number_text(value) + trail


def _edit(_: int, ranked: RankedHypothesis, lines: list[str]) -> list[str]:
    (line,) = lines
    parts = body(line).split(SEP)
    feature = f"{FEATURE} {number_text(ranked.score)}"
    features = parts[2]
    if _OLD_FEATURE.search(features):
        parts[2] = _OLD_FEATURE.sub(feature, features)
    else:
        trail = features[len(features.rstrip()):] or " "
        parts[2] = f"{features.rstrip()} {feature}{trail}"
    parts[3] = _replace_number(parts[3], ranked.combined)
    return [SEP.join(parts) + ending(line)]


def parse(name: str, text: str) -> MosesDocument:
    doc = MosesDocument(name, split_lines(text))
    for at, content in content_lines(doc.lines):
        number = at + 1
        parts = content.split(SEP)
        if len(parts) < 4:
            raise NbestFormatError(name, number, f"{len(parts)} '|||'-separated fields; "
                                                 "expected id ||| hypothesis ||| features ||| "
                                                 "total")
        sentence = parts[0].strip()
        if not sentence:
            raise NbestFormatError(name, number, "the sentence id (first field) is empty")
        total = parse_score(name, number, parts[3].strip(), "total score")
        doc.add(sentence, Candidate(parts[1].strip(), total, number), at)
    return doc

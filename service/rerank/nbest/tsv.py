"""Plain TSV: one hypothesis a row, rows of a list sharing its id.

With a header row (the first row names an ``id`` and a ``text`` column), the columns are found
by name: ``id`` and ``text`` are required, ``score`` (log domain, higher = better) and
``reference`` are optional, any other column is kept. Without one, the columns are
``id, text[, score[, anything else...]]``. Values are not quoted: a tab always separates.

Re-ranking re-orders the rows of each list within the places they held and appends three
columns, ``electric_score``, ``electric_tokens`` and ``electric_combined`` (named in the
header when there is one; replaced rather than repeated when the input already has them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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

ADDED = ("electric_score", "electric_tokens", "electric_combined")


@dataclass(kw_only=True)
class TsvDocument(LineDocument):
    columns: dict[str, int]
    header: int | None
    """Index of the header line, if any."""

    def render(self, rankings: Sequence[Ranking] | None = None) -> str:
        if rankings is None:
            return "".join(self.lines)
        lines = list(self.lines)
        if self.header is not None:
            lines[self.header] = self._with_added(lines[self.header], list(ADDED))
        return permute_blocks(lines, self.blocks, rankings, self._edit)

    def _edit(self, _: int, ranked: RankedHypothesis, rows: list[str]) -> list[str]:
        values = [number_text(ranked.score), str(ranked.num_tokens), number_text(ranked.combined)]
        return [self._with_added(row, values) for row in rows]

    def _with_added(self, line: str, values: list[str]) -> str:
        fields = body(line).split("\t")
        if all(name in self.columns for name in ADDED):
            fields.extend([""] * (max(self.columns[n] for n in ADDED) + 1 - len(fields)))
            for name, value in zip(ADDED, values):
                fields[self.columns[name]] = value
        else:
            fields.extend(values)
        return "\t".join(fields) + ending(line)


def _columns(first: str) -> tuple[dict[str, int], bool]:
    names = first.split("\t")
    if "id" in names and "text" in names:
        return {name: i for i, name in enumerate(names)}, True
    return {"id": 0, "text": 1, "score": 2}, False


def parse(name: str, text: str) -> TsvDocument:
    lines = split_lines(text)
    first_at, first = next(content_lines(lines), (None, ""))
    columns, has_header = _columns(first)
    header = first_at if has_header else None
    doc = TsvDocument(name, lines, columns=columns, header=header)
    need = max(columns["id"], columns["text"]) + 1
    for at, content in content_lines(lines):
        if at == header:
            continue
        number = at + 1
        fields = content.split("\t")
        if len(fields) < need:
            raise NbestFormatError(name, number, f"{len(fields)} tab-separated fields; a row "
                                                 f"needs at least {need} (id, text)")
        list_id = fields[columns["id"]]
        score_at = columns.get("score")
        score = None
        if score_at is not None and score_at < len(fields) and fields[score_at].strip():
            score = parse_score(name, number, fields[score_at].strip(), "score")
        lst = doc.lists[doc.add(list_id, Candidate(fields[columns["text"]], score, number), at)]
        ref_at = columns.get("reference")
        if ref_at is not None and ref_at < len(fields) and fields[ref_at]:
            if lst.reference is not None and lst.reference != fields[ref_at]:
                raise NbestFormatError(name, number, f"list {list_id!r} has a different "
                                                     "reference on an earlier row")
            lst.reference = fields[ref_at]
    return doc

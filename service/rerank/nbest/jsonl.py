"""Plain JSONL: one n-best list a line.

    {"id": "utt1", "reference": "the cat sat", "hypotheses": ["the cat sat", {"text": "a cat sat", "score": -3.2}]}

``id`` and ``reference`` are optional; a hypothesis is a string or an object with ``text`` and
an optional ``score`` (log domain, higher = better). Any other key, in the line or in a
hypothesis object, is kept. Re-ranking re-orders ``hypotheses`` best first and adds
``"electric": [{"index", "score", "num_tokens", "combined"}, ...]`` in the same order
(``index``: the hypothesis's position as read). Blank lines are kept as they are.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.rerank.nbest.document import (
    Candidate,
    NbestFormatError,
    NbestList,
    Ranking,
    content_lines,
    ending,
    parse_score,
    split_lines,
)
from service.rerank.nbest.json_style import JsonStyle


@dataclass
class JsonlDocument:
    name: str
    lines: list[str]
    lists: list[NbestList] = field(default_factory=list)
    objects: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """(line index, parsed object) of every list, in ``lists`` order."""
    style: JsonStyle = field(default_factory=JsonStyle)

    def render(self, rankings: Sequence[Ranking] | None = None) -> str:
        if rankings is None:
            return "".join(self.lines)
        if len(rankings) != len(self.objects):
            raise ValueError(f"{len(rankings)} rankings for {len(self.objects)} lists")
        out = list(self.lines)
        for (at, obj), ranking in zip(self.objects, rankings):
            hyps = obj["hypotheses"]
            new = dict(obj)
            new["hypotheses"] = [hyps[r.index] for r in ranking]
            new["electric"] = [{"index": r.index, "score": r.score, "num_tokens": r.num_tokens,
                                "combined": r.combined} for r in ranking]
            out[at] = self.style.dumps(new) + ending(self.lines[at])
        return "".join(out)


def _candidate(name: str, line: int, index: int, item: Any) -> Candidate:
    if isinstance(item, str):
        return Candidate(item, None, line)
    if not isinstance(item, dict) or not isinstance(item.get("text"), str):
        raise NbestFormatError(name, line, f"hypotheses[{index}] is {json.dumps(item)[:60]}; "
                                           'expected a string or {"text": ..., "score": ...}')
    score = item.get("score")
    if score is None:
        return Candidate(item["text"], None, line)
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise NbestFormatError(name, line, f"hypotheses[{index}].score {score!r} is not a number")
    return Candidate(item["text"], parse_score(name, line, str(score),
                                               f"hypotheses[{index}].score"), line)


def parse(name: str, text: str) -> JsonlDocument:
    doc = JsonlDocument(name, split_lines(text))
    for at, content in content_lines(doc.lines):
        number = at + 1
        try:
            obj = json.loads(content)
        except ValueError as exc:
            raise NbestFormatError(name, number, f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise NbestFormatError(name, number, "expected a JSON object with 'hypotheses'")
        hyps = obj.get("hypotheses")
        if not isinstance(hyps, list):
            raise NbestFormatError(name, number, "'hypotheses' is missing or not a list")
        reference = obj.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise NbestFormatError(name, number, "'reference' is not a string")
        if not doc.objects:
            doc.style = JsonStyle.detect(content, obj)
        list_id = str(obj["id"]) if obj.get("id") is not None else str(number)
        doc.lists.append(NbestList(
            id=list_id, reference=reference, line=number,
            candidates=[_candidate(name, number, j, h) for j, h in enumerate(hyps)]))
        doc.objects.append((at, obj))
    return doc

"""ESPnet / mlm-scoring n-best JSON: one document, keyed by utterance.

    {"utt1": {"hyp_1": {"score": -3.1, "text": "the cat sat"}, "hyp_2": {...}, "ref": "the cat sat"}}

This is the layout of awslabs/mlm-scoring's ``*.am.json`` files (ESPnet LibriSpeech 100-best).
``hyp_N`` (N from 1) orders the hypotheses whatever order the keys are written in (mlm-scoring
sorts them as strings: hyp_1, hyp_10, hyp_100, hyp_11...). ``score`` is the system's log-domain
score; ``ref`` the reference. Other keys, in an utterance or a hypothesis, are kept.

Re-ranking renumbers: ``hyp_1`` becomes the best hypothesis, each keeping its own fields and
gaining ``"electric": {"score", "num_tokens", "combined", "was": "hyp_7"}``. Written back in the
input's own JSON style (indent, key order, escaping); without a ranking the text is returned as
it was read. JSON has no line numbers to speak of, so messages give the line where the
utterance's key first appears.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.rerank.nbest.document import (
    Candidate,
    NbestFormatError,
    NbestList,
    Ranking,
    parse_score,
)
from service.rerank.nbest.json_style import JsonStyle

HYP_KEY = re.compile(r"hyp_([1-9][0-9]*)")


@dataclass
class EspnetDocument:
    name: str
    text: str
    data: dict[str, Any]
    lists: list[NbestList] = field(default_factory=list)
    keys: list[list[str]] = field(default_factory=list)
    """Per list, its hyp_N keys in N order (the order of ``candidates``)."""

    def render(self, rankings: Sequence[Ranking] | None = None) -> str:
        if rankings is None:
            return self.text
        if len(rankings) != len(self.lists):
            raise ValueError(f"{len(rankings)} rankings for {len(self.lists)} lists")
        out = dict(self.data)
        for lst, keys, ranking in zip(self.lists, self.keys, rankings):
            utt: dict[str, Any] = self.data[lst.id]
            # The k-th best goes under the k-th key in N order: hyp_1 is the best.
            moved = {}
            for key, ranked in zip(keys, ranking):
                hyp = dict(utt[keys[ranked.index]])
                hyp["electric"] = {"score": ranked.score, "num_tokens": ranked.num_tokens,
                                   "combined": ranked.combined, "was": keys[ranked.index]}
                moved[key] = hyp
            out[lst.id] = {k: moved.get(k, v) for k, v in utt.items()}
        return JsonStyle.detect(self.text, self.data).dumps(out)


def _line_of(text: str, key: str) -> int:
    at = text.find(json.dumps(key) + ":")
    return text.count("\n", 0, at) + 1 if at >= 0 else 0


def parse(name: str, text: str) -> EspnetDocument:
    try:
        data = json.loads(text)
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise NbestFormatError(name, line, f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise NbestFormatError(name, 1, "expected an object keyed by utterance id")
    doc = EspnetDocument(name, text, data)
    for utt_id, utt in data.items():
        line = _line_of(text, utt_id)
        where = f"utterance {utt_id!r}"
        if not isinstance(utt, dict):
            raise NbestFormatError(name, line, f"{where} is not an object of hyp_N entries")
        numbered = []
        for key in utt:
            match = HYP_KEY.fullmatch(key)
            if match:
                numbered.append((int(match.group(1)), key))
        numbered.sort()
        keys = [key for _, key in numbered]
        candidates = []
        for key in keys:
            hyp = utt[key]
            if not isinstance(hyp, dict) or not isinstance(hyp.get("text"), str):
                raise NbestFormatError(name, line, f'{where}, {key}: expected {{"text": ..., '
                                                   '"score": ...}}')
            score = hyp.get("score")
            if score is not None and (isinstance(score, bool)
                                      or not isinstance(score, (int, float))):
                raise NbestFormatError(name, line, f"{where}, {key}: score {score!r} is not a "
                                                   "number")
            base = None if score is None else parse_score(name, line, str(score),
                                                          f"{where}, {key}: score")
            candidates.append(Candidate(hyp["text"], base, line))
        ref = utt.get("ref")
        if ref is not None and not isinstance(ref, str):
            raise NbestFormatError(name, line, f"{where}: 'ref' is not a string")
        doc.lists.append(NbestList(id=utt_id, candidates=candidates, reference=ref, line=line))
        doc.keys.append(keys)
    return doc

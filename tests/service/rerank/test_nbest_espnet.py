"""ESPnet / mlm-scoring n-best JSON: hyp_N order, round trip in the writer's style, re-ranking."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nbest_fakes import ranking

from service.rerank.nbest import NbestFormatError, read_nbest
from service.rerank.nbest.json_style import JsonStyle


def sample() -> dict[str, Any]:
    # Eleven hypotheses, so that sorted keys (hyp_1, hyp_10, hyp_11, hyp_2...) differ from N order.
    hyps = {f"hyp_{n}": {"score": -10.0 - n / 4, "text": f" hypothesis number {n}"}
            for n in range(1, 12)}
    hyps["hyp_3"]["am_score"] = -4.25  # a field the reader does not know
    return {
        "utt-b": {**hyps, "ref": "hypothesis number three", "speaker": "Zoë"},
        "utt-a": {"hyp_1": {"score": -1.0, "text": "only one"}, "ref": "only one"},
    }


@pytest.mark.parametrize("style", [
    {"indent": 4, "ensure_ascii": False, "sort_keys": True},  # ESPnet
    {"indent": 2},  # mlm-scoring
    {},  # one line
])
def test_round_trip_and_style_detection(tmp_path: Path, style: dict[str, Any]) -> None:
    text = json.dumps(sample(), **style)
    path = tmp_path / "dev.am.json"
    path.write_text(text, encoding="utf-8")
    doc = read_nbest("espnet", path)
    assert doc.render(None) == text
    # The writer reproduces the file from what it parsed, so a re-ranked file keeps the style.
    assert JsonStyle.detect(text, json.loads(text)).dumps(json.loads(text)) == text
    lists = {lst.id: lst for lst in doc.lists}
    b, a = lists["utt-b"], lists["utt-a"]
    assert [c.text for c in b.candidates] == [f" hypothesis number {n}" for n in range(1, 12)]
    assert b.candidates[0].base_score == -10.25 and b.reference == "hypothesis number three"
    assert a.id == "utt-a" and len(a.candidates) == 1


def test_reranked_hyp_1_is_the_best_and_keeps_its_fields(tmp_path: Path) -> None:
    text = json.dumps(sample(), indent=4, ensure_ascii=False, sort_keys=True) + "\n"
    path = tmp_path / "dev.am.json"
    path.write_text(text, encoding="utf-8")
    doc = read_nbest("espnet", path)
    order = [2, 0, 1] + list(range(3, 11))  # hyp_3 best, then hyp_1, hyp_2, ...
    assert [lst.id for lst in doc.lists] == ["utt-a", "utt-b"]  # sorted keys: file order
    out = doc.render([ranking([0]), ranking(order)])
    assert out.endswith("}\n") and '    "utt-a"' in out and "Zoë" in out
    data = json.loads(out)
    best = data["utt-b"]["hyp_1"]
    assert best["text"] == " hypothesis number 3" and best["am_score"] == -4.25
    assert best["electric"]["was"] == "hyp_3" and best["electric"]["score"] == -1.5
    assert data["utt-b"]["hyp_2"]["text"] == " hypothesis number 1"
    assert data["utt-b"]["ref"] == "hypothesis number three"
    assert data["utt-b"]["speaker"] == "Zoë"
    # The output is the input's style: the same text again for an identity ranking.
    assert doc.render([ranking([0]), ranking(list(range(11)))]) != text  # "electric" added
    (tmp_path / "out.json").write_text(out, encoding="utf-8")
    again = read_nbest("espnet", tmp_path / "out.json")
    assert [c.text for c in again.lists[1].candidates][:2] == [" hypothesis number 3",
                                                               " hypothesis number 1"]


@pytest.mark.parametrize("utt, problem", [
    ({"hyp_1": "just text"}, "hyp_1: expected"),
    ({"hyp_1": {"text": "t", "score": "x"}}, "score 'x' is not a number"),
    ({"hyp_1": {"text": "t"}, "ref": 3}, "'ref' is not a string"),
    (["not", "an", "object"], "is not an object"),
])
def test_errors_name_the_utterance_and_its_line(tmp_path: Path, utt: Any, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"ok": {"hyp_1": {"text": "fine", "score": 0}}, "broken": utt},
                               indent=2))
    with pytest.raises(NbestFormatError, match=problem) as info:
        read_nbest("espnet", path)
    message = str(info.value)
    assert message.startswith(f"{path}:") and "utterance 'broken'" in message
    assert info.value.line is not None and info.value.line > 1


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "u": {\n    "hyp_1": {"text": "a",}\n  }\n}\n')
    with pytest.raises(NbestFormatError, match=r"bad\.json:3: not JSON"):
        read_nbest("espnet", path)

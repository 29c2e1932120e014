"""Plain JSONL and TSV n-best files: round trip, re-ordering, errors that name the line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from nbest_fakes import ranking

from service.rerank.nbest import NbestFormatError, ReadOptions, read_nbest

JSONL = (
    '{"id": "u1", "reference": "the cat sat", "hypotheses": ["the cat sat", '
    '{"text": "a cat sat", "score": -1.5, "lattice": 7}], "meta": {"speaker": "Zoë"}}\r\n'
    "\n"
    '{"id": 2, "hypotheses": []}\n'
    '{"hypotheses": ["x", "y z", "x"]}'  # no id, no final newline
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_jsonl_reads_lists_and_round_trips_byte_for_byte(tmp_path: Path) -> None:
    doc = read_nbest("jsonl", write(tmp_path, "n.jsonl", JSONL))
    assert [lst.id for lst in doc.lists] == ["u1", "2", "4"]  # no id: the line number
    first = doc.lists[0]
    assert [(c.text, c.base_score) for c in first.candidates] == [("the cat sat", None),
                                                                  ("a cat sat", -1.5)]
    assert first.reference == "the cat sat" and doc.lists[2].reference is None
    assert doc.render(None) == JSONL


def test_jsonl_reranked_keeps_every_other_field(tmp_path: Path) -> None:
    doc = read_nbest("jsonl", write(tmp_path, "n.jsonl", JSONL))
    out = doc.render([ranking([1, 0]), ranking([]), ranking([2, 0, 1])])
    lines = out.split("\n")
    assert lines[0].endswith("\r") and lines[1] == ""  # endings and blank lines kept
    row = json.loads(lines[0])
    assert row["hypotheses"] == [{"text": "a cat sat", "score": -1.5, "lattice": 7},
                                 "the cat sat"]
    assert row["meta"] == {"speaker": "Zoë"} and "Zoë" in lines[0]  # not escaped, as read
    assert [e["index"] for e in row["electric"]] == [1, 0]
    assert set(row["electric"][0]) == {"index", "score", "num_tokens", "combined"}
    assert json.loads(lines[3])["hypotheses"] == ["x", "x", "y z"]
    # The re-ranked file reads back as the same lists, re-ordered.
    again = read_nbest("jsonl", write(tmp_path, "out.jsonl", out))
    assert [c.text for c in again.lists[0].candidates] == ["a cat sat", "the cat sat"]


@pytest.mark.parametrize("line, problem", [
    ('{"id": "a", "hypotheses": ["ok"]', "not JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"id": "a"}', "'hypotheses' is missing"),
    ('{"id": "a", "hypotheses": ["ok", 3]}', "hypotheses[1]"),
    ('{"id": "a", "hypotheses": [{"text": "ok", "score": "high"}]}', "is not a number"),
    ('{"id": "a", "hypotheses": [{"text": "ok", "score": Infinity}]}', "not finite"),
    ('{"id": "a", "reference": 5, "hypotheses": []}', "'reference' is not a string"),
])
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path, "bad.jsonl", '{"hypotheses": ["fine"]}\n\n' + line + "\n")
    with pytest.raises(NbestFormatError, match=re.escape(problem)) as info:
        read_nbest("jsonl", path)
    assert str(info.value).startswith(f"{path}:3: ")


def test_jsonl_references_file_overrides_by_id(tmp_path: Path) -> None:
    refs = write(tmp_path, "refs.tsv", "u1\tthe cat sat down\n2\tnothing\n4\tx y\n")
    doc = read_nbest("jsonl", write(tmp_path, "n.jsonl", JSONL), ReadOptions(references=refs))
    assert [lst.reference for lst in doc.lists] == ["the cat sat down", "nothing", "x y"]
    short = write(tmp_path, "short.tsv", "u1\tthe cat sat\n")
    with pytest.raises(NbestFormatError, match="no reference for list '2'"):
        read_nbest("jsonl", write(tmp_path, "n.jsonl", JSONL), ReadOptions(references=short))


TSV = ("id\ttext\tscore\treference\tsystem\n"
       "s1\tthe cat sat\t-1.0\tthe cat sat\tA\n"
       "s2\thello\t\t\tB\n"
       "s1\ta cat sat\t-0.5\t\tC\n")


def test_tsv_with_header_round_trips_and_appends_columns(tmp_path: Path) -> None:
    doc = read_nbest("tsv", write(tmp_path, "n.tsv", TSV))
    assert doc.render(None) == TSV
    s1, s2 = doc.lists
    assert [(c.text, c.base_score, c.line) for c in s1.candidates] == [
        ("the cat sat", -1.0, 2), ("a cat sat", -0.5, 4)]
    assert s1.reference == "the cat sat" and s2.reference is None
    assert s2.candidates[0].base_score is None
    out = doc.render([ranking([1, 0]), ranking([0])]).split("\n")
    assert out[0] == "id\ttext\tscore\treference\tsystem\telectric_score\telectric_tokens\t" \
                     "electric_combined"
    # s1's rows trade places (lines 2 and 4); s2's row stays on line 3.
    assert out[1].startswith("s1\ta cat sat\t-0.5\t\tC\t-1.5\t2\t")
    assert out[2].startswith("s2\thello\t")
    assert out[3].startswith("s1\tthe cat sat\t-1.0\tthe cat sat\tA\t-3\t1\t")
    # A second pass replaces the added columns instead of adding three more.
    again = read_nbest("tsv", write(tmp_path, "o.tsv", "\n".join(out)))
    twice = again.render([ranking([1, 0]), ranking([0])]).split("\n")
    assert len(twice[0].split("\t")) == 8 and len(twice[1].split("\t")) == 8


def test_tsv_without_header_is_id_text_score(tmp_path: Path) -> None:
    text = "0\tthe cat\t-2\n0\ta cat\t-1\textra\n1\tdog\n"
    doc = read_nbest("tsv", write(tmp_path, "n.tsv", text))
    assert doc.render(None) == text
    assert [(c.text, c.base_score) for c in doc.lists[0].candidates] == [("the cat", -2.0),
                                                                         ("a cat", -1.0)]
    assert doc.lists[1].candidates[0].base_score is None
    out = doc.render([ranking([1, 0]), ranking([0])]).split("\n")
    assert out[0].startswith("0\ta cat\t-1\textra\t")


def test_tsv_errors_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(NbestFormatError, match=r"n\.tsv:3: 1 tab-separated fields"):
        read_nbest("tsv", write(tmp_path, "n.tsv", "a\tone\n\nlonely\n"))
    with pytest.raises(NbestFormatError, match=r"n\.tsv:2: score 'x' is not a number"):
        read_nbest("tsv", write(tmp_path, "n.tsv", "a\tone\t1\na\ttwo\tx\n"))
    bad_ref = "id\ttext\treference\na\tone\tr1\na\ttwo\tr2\n"
    with pytest.raises(NbestFormatError, match=r"n\.tsv:3: .*different reference"):
        read_nbest("tsv", write(tmp_path, "n.tsv", bad_ref))

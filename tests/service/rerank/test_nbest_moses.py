"""Moses / Marian n-best: the Electric= feature, the new total, and re-ordering."""

from __future__ import annotations

from pathlib import Path

import pytest
from nbest_fakes import ranking

from service.rerank.nbest import NbestFormatError, ReadOptions, read_nbest
from service.schemas import RankedHypothesis

MOSES = ("0 ||| das haus ist klein ||| LM0= -12.5 TM0= -3.1 -2 WordPenalty0= -4 ||| -8.93 "
         "||| 0-0 1-1\n"
         "0 ||| das haus ist winzig ||| LM0= -14 TM0= -2.9 -2 WordPenalty0= -4 ||| -9.5\n"
         "1 ||| hallo ||| LM0= -3 TM0= -1 -1 WordPenalty0= -1 ||| -2.25\n")
MARIAN = ("0 ||| a small house ||| F0= -2.1 F1= -1.4 ||| -1.75\n"
          "0 ||| a little house ||| F0= -2.4 F1= -1.2 ||| -1.8\n")


def write(tmp_path: Path, text: str, name: str = "nbest.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_round_trip_and_totals_as_base_scores(tmp_path: Path) -> None:
    doc = read_nbest("moses", write(tmp_path, MOSES))
    assert doc.render(None) == MOSES
    zero, one = doc.lists
    assert [(c.text, c.base_score) for c in zero.candidates] == [
        ("das haus ist klein", -8.93), ("das haus ist winzig", -9.5)]
    assert one.id == "1"
    marian = read_nbest("marian", write(tmp_path, MARIAN, "m.txt"))
    assert marian.render(None) == MARIAN and len(marian.lists[0].candidates) == 2


def entry(index: int, score: float, combined: float) -> RankedHypothesis:
    return RankedHypothesis(index=index, text="", score=score, base_score=0.0,
                            combined=combined, num_tokens=4)


def test_electric_feature_and_new_total(tmp_path: Path) -> None:
    doc = read_nbest("moses", write(tmp_path, MOSES))
    out = doc.render([[entry(1, -20.5, -9.0), entry(0, -30.25, -9.25)],
                      [entry(0, -5.0, -3.0)]]).splitlines()
    assert out == [
        ("0 ||| das haus ist winzig ||| LM0= -14 TM0= -2.9 -2 WordPenalty0= -4 Electric= -20.5 "
         "||| -9"),
        ("0 ||| das haus ist klein ||| LM0= -12.5 TM0= -3.1 -2 WordPenalty0= -4 "
         "Electric= -30.25 ||| -9.25 ||| 0-0 1-1"),
        "1 ||| hallo ||| LM0= -3 TM0= -1 -1 WordPenalty0= -1 Electric= -5 ||| -3",
    ]
    # A second pass replaces the feature rather than adding another.
    again = read_nbest("moses", write(tmp_path, "\n".join(out) + "\n", "again.txt"))
    twice = again.render([ranking([0, 1]), ranking([0])]).splitlines()
    assert [line.count("Electric=") for line in twice] == [1, 1, 1]
    assert "Electric= -1.5 |||" in twice[0]


def test_references_are_numbered_lines(tmp_path: Path) -> None:
    refs = write(tmp_path, "the house is small\nhello\n", "ref.en")
    doc = read_nbest("moses", write(tmp_path, MOSES), ReadOptions(references=refs))
    assert [lst.reference for lst in doc.lists] == ["the house is small", "hello"]


@pytest.mark.parametrize("bad, problem", [
    ("2 ||| only two fields\n", r":4: 2 '\|\|\|'-separated fields"),
    ("2 ||| text ||| F0= 1 ||| high\n", r":4: total score 'high' is not a number"),
    (" ||| text ||| F0= 1 ||| -1\n", r":4: the sentence id \(first field\) is empty"),
])
def test_malformed_lines_are_errors(tmp_path: Path, bad: str, problem: str) -> None:
    path = write(tmp_path, MOSES + bad)
    with pytest.raises(NbestFormatError, match=problem) as info:
        read_nbest("moses", path)
    assert str(info.value).startswith(str(path))

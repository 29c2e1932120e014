"""Kaldi n-best text with separate score files."""

from __future__ import annotations

from pathlib import Path

import pytest
from nbest_fakes import ranking

from service.rerank.nbest import NbestFormatError, ReadOptions, ScoreFile, read_nbest

TEXT = ("1272-128104-0000-1 mister quilter is the apostle\n"
        "1272-128104-0000-2 mister quilter is the apostles\n"
        "1272-128104-0000-3\n"
        "\n"
        "utt2-1 hello world\n")
AC = "1272-128104-0000-1 100.5\n1272-128104-0000-2 101\n1272-128104-0000-3 120\nutt2-1 50\n"
LM = "utt2-1 7\n1272-128104-0000-3 30\n1272-128104-0000-1 12\n1272-128104-0000-2 11\n"


def files(tmp_path: Path, text: str = TEXT, ac: str = AC, lm: str = LM) -> tuple[Path, ...]:
    paths = tmp_path / "nbest.txt", tmp_path / "ac_cost", tmp_path / "lm_cost"
    for path, content in zip(paths, (text, ac, lm)):
        path.write_text(content)
    return paths


def test_round_trip_and_utterances(tmp_path: Path) -> None:
    text, _, _ = files(tmp_path)
    doc = read_nbest("kaldi", text)
    assert doc.render(None) == TEXT
    utt, other = doc.lists
    assert utt.id == "1272-128104-0000" and other.id == "utt2"
    assert [c.text for c in utt.candidates] == ["mister quilter is the apostle",
                                                "mister quilter is the apostles", ""]
    assert all(c.base_score is None for c in utt.candidates)  # no score files given


def test_score_files_make_the_base_score(tmp_path: Path) -> None:
    text, ac, lm = files(tmp_path)
    options = ReadOptions(score_files=[ScoreFile.parse(f"{ac}:-0.1"), ScoreFile.parse(str(lm))])
    doc = read_nbest("kaldi", text, options)
    scores = [c.base_score for c in doc.lists[0].candidates]
    assert scores == pytest.approx([-0.1 * 100.5 - 12, -0.1 * 101 - 11, -0.1 * 120 - 30])
    assert ScoreFile.parse("dir:with:colons/ac_cost") == ScoreFile(Path("dir:with:colons/ac_cost"))


def test_reranking_moves_lines_and_keeps_keys(tmp_path: Path) -> None:
    text, _, _ = files(tmp_path)
    doc = read_nbest("kaldi", text)
    out = doc.render([ranking([1, 2, 0]), ranking([0])])
    assert out == ("1272-128104-0000-2 mister quilter is the apostles\n"
                   "1272-128104-0000-3\n"
                   "1272-128104-0000-1 mister quilter is the apostle\n"
                   "\n"
                   "utt2-1 hello world\n")


def test_references_from_a_kaldi_text_file(tmp_path: Path) -> None:
    text, _, _ = files(tmp_path)
    refs = tmp_path / "text"
    refs.write_text("1272-128104-0000 mister quilter is the apostle\nutt2 hello world\n")
    doc = read_nbest("kaldi", text, ReadOptions(references=refs))
    assert [lst.reference for lst in doc.lists] == ["mister quilter is the apostle",
                                                    "hello world"]


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    text, ac, lm = files(tmp_path, text=TEXT + "no_rank_here words\n")
    with pytest.raises(NbestFormatError, match=r"nbest\.txt:6: key 'no_rank_here' does not "):
        read_nbest("kaldi", text)
    text, ac, lm = files(tmp_path, text=TEXT + "utt2-1 again\n")
    with pytest.raises(NbestFormatError, match=r"nbest\.txt:6: key 'utt2-1' appears twice"):
        read_nbest("kaldi", text)
    # A hypothesis without a score is an error at its line in the text file...
    text, ac, lm = files(tmp_path, ac=AC.replace("utt2-1 50\n", ""))
    with pytest.raises(NbestFormatError, match=r"nbest\.txt:5: 'utt2-1' has no score in .*ac_cost"):
        read_nbest("kaldi", text, ReadOptions(score_files=[ScoreFile(ac)]))
    # ... and a bad or unknown score at its line in the score file.
    text, ac, lm = files(tmp_path, ac=AC.replace("101", "1o1"))
    with pytest.raises(NbestFormatError, match=r"ac_cost:2: score '1o1' is not a number"):
        read_nbest("kaldi", text, ReadOptions(score_files=[ScoreFile(ac)]))
    text, ac, lm = files(tmp_path, lm=LM + "utt9-1 3\n")
    with pytest.raises(NbestFormatError, match=r"lm_cost:5: 'utt9-1' is not a hypothesis"):
        read_nbest("kaldi", text, ReadOptions(score_files=[ScoreFile(lm)]))

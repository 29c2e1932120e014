"""fairseq-generate output: H/D/P blocks, base-2 scores in nats, T- references."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from nbest_fakes import ranking

from service.rerank.nbest import NbestFormatError, ReadOptions, read_nbest

GENERATE = (
    "2024-01-01 12:00:00 | INFO | fairseq_cli.generate | loading model\n"
    "S-1\tle chat est assis\n"
    "T-1\tthe cat is sitting\n"
    "H-1\t-0.5\tthe cat is seated\n"
    "D-1\t-0.5\tThe cat is seated\n"
    "P-1\t-0.1 -0.2 -0.2 -0.9\n"
    "H-1\t-1.25\tthe cat sits\n"
    "D-1\t-1.25\tThe cat sits\n"
    "P-1\t-0.3 -0.3 -0.4 -0.2\n"
    "A-1\t0-0 1-1 2-2\n"
    "S-0\tbonjour\n"
    "T-0\thello\n"
    "H-0\t-0.25\thello\n"
    "P-0\t-0.25 -0.25\n"
    "H-0\t-2\t\n"
    "P-0\t-2\n"
    "Generate test with beam=2: BLEU4 = 10.00, 40.0/20.0/10.0/5.0\n"
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "generate-test.txt"
    path.write_text(text)
    return path


def test_reads_blocks_scores_in_nats_and_references(tmp_path: Path) -> None:
    doc = read_nbest("fairseq", write(tmp_path, GENERATE))
    assert doc.render(None) == GENERATE
    one, zero = doc.lists
    assert one.id == "1" and one.reference == "the cat is sitting"
    # The D- (detokenized) text is scored where there is one; scores go from base 2 to nats.
    assert [(c.text, c.line) for c in one.candidates] == [("The cat is seated", 4),
                                                          ("The cat sits", 7)]
    assert one.candidates[0].base_score == pytest.approx(-0.5 * math.log(2))
    assert [c.text for c in zero.candidates] == ["hello", ""]  # an empty hypothesis counts
    assert zero.candidates[1].base_score == pytest.approx(-2 * math.log(2))


def test_reranking_swaps_whole_blocks(tmp_path: Path) -> None:
    doc = read_nbest("fairseq", write(tmp_path, GENERATE))
    lines = doc.render([ranking([1, 0]), ranking([1, 0])]).splitlines()
    assert lines[3:10] == ["H-1\t-1.25\tthe cat sits", "D-1\t-1.25\tThe cat sits",
                           "P-1\t-0.3 -0.3 -0.4 -0.2", "A-1\t0-0 1-1 2-2",
                           "H-1\t-0.5\tthe cat is seated", "D-1\t-0.5\tThe cat is seated",
                           "P-1\t-0.1 -0.2 -0.2 -0.9"]
    assert lines[12:16] == ["H-0\t-2\t", "P-0\t-2", "H-0\t-0.25\thello", "P-0\t-0.25 -0.25"]
    assert lines[0].startswith("2024") and lines[-1].startswith("Generate test")


def test_numbered_references_file(tmp_path: Path) -> None:
    refs = tmp_path / "ref.txt"
    refs.write_text("hello there\nthe cat sits\n")
    doc = read_nbest("fairseq", write(tmp_path, GENERATE), ReadOptions(references=refs))
    assert [lst.reference for lst in doc.lists] == ["the cat sits", "hello there"]


@pytest.mark.parametrize("bad, problem", [
    ("H-3\tnan-ish\ttext\n", r":2: H- score 'nan-ish' is not a number"),
    ("H-3 -0.5 spaces not tabs\n", r":2: a H- line needs the id, a tab"),
    ("H-3\t-0.5\n", r":2: an H- line needs a score and a text"),
    ("D-3\t-0.5\ttext\n", r":2: D-3 does not follow an H-3 line"),
])
def test_malformed_hypothesis_lines_are_errors(tmp_path: Path, bad: str, problem: str) -> None:
    path = write(tmp_path, "S-3\tsource\n" + bad)
    with pytest.raises(NbestFormatError, match=problem) as info:
        read_nbest("fairseq", path)
    assert str(info.value).startswith(str(path))

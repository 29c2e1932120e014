"""``electric score``: in process and against a running service, JSONL and TSV, errors."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import FakeEngine
from live_server import live_server

from electric.cli import main
from service.commands.progress import Progress
from service.local import InProcessScorer

SENTENCES = ["the cat sat on the mat", "", "a dog ran to the old house",
             "she reads a good book today", "xyzzy quux"]
LOCAL = ["--variant", "fp32", "--threads", "1"]


@pytest.fixture(scope="module")
def server(tiny_artifact: Path) -> Iterator[str]:
    with live_server(tiny_artifact) as url:
        yield url


def lines_file(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "in.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_one_line_per_input_line(tmp_path: Path, tiny_artifact: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["score", str(lines_file(tmp_path, SENTENCES)), "-o", str(out), "--energies",
                 "--artifact", str(tiny_artifact), *LOCAL]) == 0
    rows = read_jsonl(out)
    assert len(rows) == len(SENTENCES)
    assert rows[1] == {"score": 0.0, "num_tokens": 0, "tokens": [], "energies": []}  # blank line
    first = rows[0]
    assert first["num_tokens"] == 6 and first["tokens"] == SENTENCES[0].split()
    assert first["score"] == pytest.approx(-sum(first["energies"]), abs=1e-5)  # type: ignore


def test_tsv_and_stdin(tmp_path: Path, tiny_artifact: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(SENTENCES[:3]) + "\n"))
    out = tmp_path / "out.tsv"
    assert main(["score", "-", "-o", str(out), "--format", "tsv",
                 "--artifact", str(tiny_artifact), *LOCAL]) == 0
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert [len(r) for r in rows] == [2, 2, 2]
    assert rows[1] == ["0.000000", "0"] and rows[0][1] == "6"


def test_scores_do_not_depend_on_the_window(tiny_artifact: Path) -> None:
    texts = [" ".join(["the cat sat"] * (1 + i % 5)) for i in range(40)]
    whole = list(InProcessScorer(tiny_artifact, "fp32", 1).stream(texts))
    small = list(InProcessScorer(tiny_artifact, "fp32", 1, window=3).stream(texts))
    assert [s.score for s in whole] == pytest.approx([s.score for s in small], abs=1e-4)


def test_batches_follow_the_service_policy(fake_artifact: Path) -> None:
    engine = FakeEngine()
    scorer = InProcessScorer(fake_artifact, engine=engine, window=256)
    texts = ["the cat"] * 100 + ["the cat sat on the mat today"] * 20
    results = list(scorer.stream(texts))
    assert len(results) == 120
    assert max(b for b, _ in engine.shapes) <= 64  # the service's max_batch_size
    assert all(b * t <= 1024 for b, t in engine.shapes)  # the CPU token budget
    ids = scorer.tokenizer.encode(["the cat"], False)[0].ids[1:-1].tolist()
    assert results[0].score == pytest.approx(FakeEngine.expected_score(ids))


def test_too_long_line_names_file_and_line(tmp_path: Path, tiny_artifact: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = lines_file(tmp_path, ["fine", "also fine", "the " * 100])
    assert main(["score", str(path), "--artifact", str(tiny_artifact), *LOCAL]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3: the sentence has 100 tokens, the model scores at most 62" in err
    assert "--truncate" in err
    out = tmp_path / "out.jsonl"
    assert main(["score", str(path), "-o", str(out), "--truncate",
                 "--artifact", str(tiny_artifact), *LOCAL]) == 0
    assert read_jsonl(out)[2] == {"score": pytest.approx(read_jsonl(out)[2]["score"]),
                                  "num_tokens": 62, "truncated": True}


def test_line_past_the_character_bound_names_file_and_line(
        tmp_path: Path, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Refused before tokenizing (32 characters per scored token, 1984 here): a line, not a
    traceback, and --truncate scores its beginning."""
    path = lines_file(tmp_path, ["fine", "!" * 2000])
    assert main(["score", str(path), "--artifact", str(tiny_artifact), *LOCAL]) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: the sentence has 2000 characters; at most 1984 are tokenized" in err
    assert "--truncate" in err and "Traceback" not in err
    out = tmp_path / "out.jsonl"
    assert main(["score", str(path), "-o", str(out), "--truncate",
                 "--artifact", str(tiny_artifact), *LOCAL]) == 0
    assert read_jsonl(out)[1]["truncated"] is True


def test_progress_line_on_stderr() -> None:
    stream = io.StringIO()
    with Progress("sentences", total=10, enabled=True, stream=stream) as bar:
        bar.advance(10)
    assert "10 sentences of 10 (100%)" in stream.getvalue()
    quiet = io.StringIO()
    with Progress("sentences", enabled=None, stream=quiet) as bar:  # not a terminal: silent
        bar.advance(5)
    assert quiet.getvalue() == ""


def test_url_gives_the_in_process_scores(tmp_path: Path, tiny_artifact: Path,
                                         server: str) -> None:
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(23)]
    path = lines_file(tmp_path, texts)
    remote, local = tmp_path / "remote.jsonl", tmp_path / "local.jsonl"
    # Small requests, several in flight: the answers must still come back in input order.
    assert main(["score", str(path), "-o", str(remote), "--url", server,
                 "--request-size", "2", "--concurrency", "4"]) == 0
    assert main(["score", str(path), "-o", str(local), "--artifact", str(tiny_artifact),
                 *LOCAL]) == 0
    r, lo = read_jsonl(remote), read_jsonl(local)
    assert [x["num_tokens"] for x in r] == [x["num_tokens"] for x in lo]
    assert [x["score"] for x in r] == pytest.approx([x["score"] for x in lo], abs=1e-4)


def test_url_too_long_names_the_line(tmp_path: Path, server: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = lines_file(tmp_path, ["fine", "", "the " * 70])
    assert main(["score", str(path), "--url", server]) == 1
    assert f"{path}:3: the sentence has 70 tokens" in capsys.readouterr().err


def test_url_refusal_names_the_line(tmp_path: Path, server: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = lines_file(tmp_path, ["fine", "a bell \x07 rings"])
    assert main(["score", str(path), "--url", server]) == 1
    assert f"{path}:2: the sentence was refused by the service: " in capsys.readouterr().err

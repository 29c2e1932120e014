"""examples/: every file the README's commands name is there, small, readable, documented,
and the commands run on it (on the tiny artifact: no real weights in tests)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from electric.cli import main
from evaluation.sets import (
    FILES,
    in_tuning_half,
    read_asr,
    read_mt,
    read_zorro,
    resolve_eval_dir,
)
from service.rerank.nbest import read_nbest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# The tiny model takes 62 tokens and splits unknown words finely: long lines are cut.
LOCAL = ["--variant", "fp32", "--threads", "1", "--truncate"]


def example_files() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*") if p.is_file() and p.name != "README.md")


def test_every_example_path_in_the_readme_exists() -> None:
    named = set(re.findall(r"examples/[\w./-]*\w", (ROOT / "README.md").read_text()))
    assert {"examples/sentences.txt", "examples/asr_test.jsonl", "examples/eval"} <= named
    for path in named:
        assert (ROOT / path).exists(), f"README.md names {path}, which is missing"


def test_examples_are_small_and_each_has_a_source_and_licence() -> None:
    files = example_files()
    assert sum(p.stat().st_size for p in files) < 150_000
    card = (EXAMPLES / "README.md").read_text()
    for path in files:
        assert f"`{path.relative_to(EXAMPLES).as_posix()}`" in card, f"{path} undocumented"
    assert card.count("licence") >= 1 and "MIT" in card and "public domain" in card


def test_the_eval_sample_reads_as_the_dev_sets_do() -> None:
    # TED-LIUM may not be redistributed: the sample has the other sets, and eval runs without it.
    folder = resolve_eval_dir(EXAMPLES / "eval", ("asr", "zorro", "mt"))
    assert not (folder / FILES["asr_ted"]).exists()
    lists = read_asr(folder / FILES["asr"])
    assert len(lists) == 40 and all(len(lst.hypotheses) == 5 for lst in lists)
    pairs = read_zorro(folder / FILES["zorro"])
    assert len({p.paradigm for p in pairs}) == 23
    assert all(len(seg.candidates) > 1 for seg in read_mt(folder / FILES["mt"]))
    dev, test = (read_asr(EXAMPLES / name) for name in ("asr_dev.jsonl", "asr_test.jsonl"))
    assert all(in_tuning_half(lst.id) for lst in dev)
    assert not any(in_tuning_half(lst.id) for lst in test)
    assert sorted(dev + test, key=lambda lst: lst.id) == lists


def test_the_nbest_examples_parse() -> None:
    moses = read_nbest("moses", EXAMPLES / "mt_nbest.en")
    jsonl = read_nbest("jsonl", EXAMPLES / "asr_test.jsonl")
    assert len(moses.lists) == 3 and len(jsonl.lists) == 20


def test_the_readme_commands_run(tiny_artifact: Path, tmp_path: Path) -> None:
    model = ["--artifact", str(tiny_artifact), *LOCAL]
    scores = tmp_path / "scores.jsonl"
    assert main(["score", str(EXAMPLES / "sentences.txt"), "-o", str(scores), *model]) == 0
    lines = (EXAMPLES / "sentences.txt").read_text().splitlines()
    rows = [json.loads(row) for row in scores.read_text().splitlines()]
    assert len(rows) == len(lines) and all({"score", "num_tokens"} <= set(r) for r in rows)

    reranked = tmp_path / "reranked.jsonl"
    assert main(["rerank", "-f", "jsonl", str(EXAMPLES / "asr_test.jsonl"), str(reranked),
                 *model]) == 0
    assert len(reranked.read_text().splitlines()) == 20
    assert main(["tune", "-f", "jsonl", str(EXAMPLES / "asr_dev.jsonl"), *model]) == 0

    moses = tmp_path / "reranked.en"
    assert main(["rerank", "-f", "moses", str(EXAMPLES / "mt_nbest.en"), str(moses),
                 *model]) == 0
    assert all("Electric= " in line for line in moses.read_text().splitlines())


def test_electric_eval_runs_on_the_sample(tiny_artifact: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    assert main(["eval", str(tiny_artifact), "--eval-dir", str(EXAMPLES / "eval"),
                 "--variants", "fp32", "--threads", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["scorers"]["electric fp32"]["zorro"]["pairs"] == 46
    assert "Zorro" in capsys.readouterr().out

"""electric bulk: every row comes back, each score equal to electric score's, in process and on a
local Ray cluster (started once for the module, 2 CPUs, no dashboard)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from electric.cli import main
from service.local import InProcessScorer

N_ROWS = 600


@pytest.fixture(scope="module")
def sentences(tiny_tokenizer_path: Path) -> list[str]:
    rng = random.Random(7)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "slept"]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14)))
            for _ in range(N_ROWS)]


@pytest.fixture(scope="module")
def reference(tiny_artifact: Path, sentences: list[str]) -> dict[str, float]:
    return {s: r.score for s, r in zip(sentences, InProcessScorer(tiny_artifact, "fp32", 1)
                                       .stream(sentences))}


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _read(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _bulk(*args: str) -> int:
    return main(["bulk", *args, "--variant", "fp32", "--no-progress"])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray", reason="the bulk extra (ray[data])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("out_name", ["out.parquet", "out.jsonl"])
def test_local_scores_every_row_as_electric_score_does(
        tiny_artifact: Path, tmp_path: Path, sentences: list[str],
        reference: dict[str, float], out_name: str) -> None:
    if out_name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    source = _write_jsonl(tmp_path / "in.jsonl",
                          [{"id": f"s{i}", "text": s} for i, s in enumerate(sentences)])
    out = tmp_path / out_name
    assert _bulk("score", str(source), str(out), "--artifact", str(tiny_artifact)) == 0
    rows = {r["id"]: r for r in _read(out)}
    assert len(rows) == N_ROWS
    for i, s in enumerate(sentences):
        assert rows[f"s{i}"]["score"] == pytest.approx(reference[s], abs=1e-5)


def test_ray_scores_every_row_as_electric_score_does(
        ray_cluster: None, tiny_artifact: Path, tmp_path: Path, sentences: list[str],
        reference: dict[str, float]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": i, "text": s} for i, s in enumerate(sentences)]),
                   source)
    out = tmp_path / "out.parquet"
    assert _bulk("score", str(source), str(out), "--engine", "ray", "--workers", "2",
                 "--artifact", str(tiny_artifact), "--energies") == 0
    rows = _read(out)
    assert sorted(r["id"] for r in rows) == list(range(N_ROWS))
    for r in rows:
        assert r["score"] == pytest.approx(reference[sentences[r["id"]]], abs=1e-5)
        assert len(r["energies"]) == len(r["tokens"]) == r["num_tokens"]


def test_rerank_in_bulk_is_the_rerank_ranking(
        ray_cluster: None, tiny_artifact: Path, tmp_path: Path, sentences: list[str],
        reference: dict[str, float]) -> None:
    lists = [{"id": f"u{i}", "hypotheses": [sentences[i], {"text": sentences[i + 1],
                                                           "score": -0.5}]}
             for i in range(0, 40, 2)]
    source = _write_jsonl(tmp_path / "nbest.jsonl", lists)
    results = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.jsonl"
        assert _bulk("rerank", str(source), str(out), "--engine", engine,
                     "--artifact", str(tiny_artifact), "--lm-weight", "1",
                     "--length-bonus", "0") == 0
        results[engine] = {r["id"]: r for r in _read(out)}
    assert results["local"] == results["ray"]
    for listed in lists:
        row = results["local"][listed["id"]]
        first, second = listed["hypotheses"]
        combined = [reference[first], -0.5 + reference[second["text"]]]
        assert row["best_index"] == (0 if combined[0] >= combined[1] else 1)
        assert [r["combined"] for r in row["ranked"]] == pytest.approx(
            sorted(combined, reverse=True), abs=1e-5)


@pytest.mark.parametrize(("rows", "message"), [
    ([{"id": 1, "text": 3}], "'text' is int, not a string"),
    ([{"id": 1}], "'text' is NoneType, not a string"),
])
def test_a_bad_row_is_named(tiny_artifact: Path, tmp_path: Path, rows: list[dict[str, Any]],
                            message: str, capsys: pytest.CaptureFixture[str]) -> None:
    source = _write_jsonl(tmp_path / "in.jsonl", rows)
    with pytest.raises(SystemExit) as stopped:
        _bulk("score", str(source), str(tmp_path / "out.jsonl"), "--artifact",
              str(tiny_artifact))
    assert message in str(stopped.value)


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    source = _write_jsonl(tmp_path / "in.jsonl", [{"text": "a"}])
    for args, message in ((["score", str(tmp_path / "in.txt"), "o.jsonl"], "must end in"),
                          (["score", str(tmp_path / "none.jsonl"), "o.jsonl"], "does not exist"),
                          (["score", str(source), "o.jsonl", "--workers", "0"], "--workers is 0"),
                          (["score", str(source), "o.jsonl", "--address", "auto"],
                           "add --engine ray")):
        with pytest.raises(SystemExit) as stopped:
            _bulk(*args)
        assert message in str(stopped.value), args

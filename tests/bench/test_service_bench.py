"""`electric bench service`: wrk's output is read right, refusals are counted, and the whole
harness runs end to end on the tiny artifact (real engine and null engine). Short loads; no
figure is asserted beyond "something was served, nothing was refused, the ratio is a number"."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench import wrk
from bench.launch import NULL_SERVE, Server
from bench.service_load import OPEN_LOOP_MAX_S, open_loop_seconds, write_bodies
from electric.cli import main

needs_wrk = pytest.mark.skipif(wrk.available() is None,
                               reason="wrk is not installed (Debian: apt-get install wrk)")

WRK_STDOUT = """Running 1s test @ http://127.0.0.1:8000/v1/score
  1 threads and 4 connections
  Latency Distribution
     50%    2.85ms
  2512 requests in 2.00s, 1.09MB read
Requests/sec:   1255.52
electric-wrk {"requests": 2512, "duration_us": 2000769, "non_200": {"429": 3, "503": 1}, \
"late": 2, "window": {"answers": 1200, "ok": 1190}, "errors": {"connect": 0, "read": 1, "write": 0, "timeout": 4}, "latency_us": \
{"p50": 2845, "p90": 5051, "p95": 9000, "p99": 17395, "max": 39756, "mean": 3496.1}}
"""


def test_wrk_output_becomes_a_load() -> None:
    load = wrk.load_from(wrk.parse_output(WRK_STDOUT), connections=4, client_cpu_s=0.5,
                         window=(0.5, 1.5))
    assert (load.requests, load.connections, load.late) == (2512, 4, 2)
    assert load.seconds == pytest.approx(2.000769)
    assert (load.window_ok, load.window_s) == (1190, 1.0)
    assert load.non_200 == {429: 3, 503: 1}
    assert load.errors == 5 and load.failures == 9
    assert (load.p50_ms, load.p95_ms, load.p99_ms) == pytest.approx((2.845, 9.0, 17.395))
    assert load.extra["max_ms"] == pytest.approx(39.756)
    assert load.requests_per_s == 1190
    whole = wrk.load_from(wrk.parse_output(WRK_STDOUT), connections=4, client_cpu_s=0.5)
    assert whole.window_s == pytest.approx(2.000769)


def test_wrk_output_without_the_script_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="electric-wrk"):
        wrk.parse_output("Running 1s test @ http://127.0.0.1:8000/v1/score\n")


def test_bodies_carry_the_sentences_in_order_and_their_mean_tokens(tmp_path: Path) -> None:
    sentences = ["a", "b c", "d", "e f g", "h"]
    path, mean = write_bodies(tmp_path, sentences, [1, 2, 1, 3, 1], per_request=2)
    bodies = [json.loads(line) for line in path.read_text().splitlines()]
    assert [b["sentences"] for b in bodies] == [["a", "b c"], ["d", "e f g"], ["h"]]
    assert all(b["truncate"] for b in bodies)
    assert mean == pytest.approx((3 + 4 + 1) / 3)


@needs_wrk
def test_an_open_loop_runs_long_enough_for_its_arrivals_within_a_bound() -> None:
    assert open_loop_seconds(30.0, 10.0, 3000) == 100.0  # 8-sentence requests: 300 in 10 s
    assert open_loop_seconds(1000.0, 10.0, 3000) == 10.0  # the duration already holds them
    assert open_loop_seconds(1.0, 10.0, 3000) == OPEN_LOOP_MAX_S
    assert open_loop_seconds(30.0, 1.0, 0) == 1.0  # no arrivals asked: the duration alone
    assert open_loop_seconds(0.7, 1.5, 1) == 2.0  # whole seconds, as wrk runs


def test_wrk_counts_what_is_not_200(tiny_artifact: Path, tmp_path: Path) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps({"sentences": ["the cat sat on the mat"]}) + "\n")
    bad.write_text(json.dumps({"sentences": []}) + "\n")  # 422: at least one sentence
    with Server({"artifact": tiny_artifact}, command=NULL_SERVE) as server:
        url = f"{server.url}/v1/score"
        refused = wrk.run(url, bad, connections=2, seconds=1)
        served = wrk.run(url, good, connections=2, seconds=2, window=(0.5, 1.5))
        paced = wrk.run(url, good, connections=8, seconds=1, rate=50)
    assert refused.requests > 0 and refused.non_200 == {422: refused.requests}
    assert refused.window_ok == 0
    assert served.failures == 0 and 0 < served.window_ok < served.requests
    assert paced.requests > 0 and paced.failures == 0


@pytest.mark.parametrize("client, engine, per_request", [
    pytest.param("wrk", "onnx", (1, 8), marks=needs_wrk),
    pytest.param("wrk", "null", (1,), marks=needs_wrk),
    ("python", "null", (8,)),
])
def test_bench_service_runs_end_to_end(tiny_artifact: Path, tmp_path: Path, client: str,
                                       engine: str, per_request: tuple[int, ...]) -> None:
    out = tmp_path / "service.json"
    argv = ["bench", "service", "--artifact", str(tiny_artifact), "--sentences", "64",
            "--words", "8", "--per-request", ",".join(map(str, per_request)),
            "--connections", "2", "--duration", "1",
            "--warmup", "0", "--engine-batches", "8", "--threads", "1", "--client", client,
            "--skip-no-batching", "--open-arrivals", "0", "--json", str(out)]
    assert main([*argv, "--null-engine"] if engine == "null" else argv) == 0
    text = out.read_text()
    assert '"/' not in text  # no absolute path in results: they name no machine's layout
    result = json.loads(text)
    assert result["client"] == client and result["machine"]["cpu_flags"] is not None
    assert [(r["per_request"], r["connections"]) for r in result["points"]] == [
        (k, 2) for k in per_request]
    assert len(result["half_load"]) == len(per_request)
    for row in result["points"] + result["half_load"]:
        assert row["requests"] > 0 and row["non_200"] == 0 and row["socket_errors"] == 0
        assert row["tokens_per_s"] > 0 and row["metrics_tokens_per_s"] > 0
        assert row["mean_batch"] >= 1 and row["server_cpu_us_per_request"] > 0
    if engine == "null":
        assert result["engine"] is None and result["variant"] == "null"
    else:
        assert set(result["engine"]["by_batch"]) == {"8", "32"}
        for row in result["points"]:
            assert math.isfinite(row["ratio_to_engine"]) and row["ratio_to_engine"] > 0
            assert row["ratio_to_best_batch"] <= row["ratio_to_engine"]

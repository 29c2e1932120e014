"""The process lifecycle over real TCP on loopback: SIGTERM under load drains and exits 0;
a corrupt artifact fails start-up with one clear line and a non-zero status.

The server runs the fake engine behind a gate that opens when the test writes a line to the
process's stdin, so "requests admitted before the signal" is a state the test sets up and
checks (the queue depth), not a race it hopes to win.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from harness import ROOT, SERVE_GATED, free_port, metric_value, server_env, wait_ready


async def _until(check_url: str, client: httpx.AsyncClient, series: str, value: float) -> None:
    for _ in range(500):
        if metric_value((await client.get(check_url)).text, series) == value:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{series} never reached {value}")


def test_sigterm_under_load_answers_every_admitted_request(fake_artifact: Path) -> None:
    admitted, late = 40, 10
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_GATED], cwd=ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=server_env(fake_artifact, port, ELECTRIC_MAX_BATCH_SIZE="1"))

    async def scenario() -> None:
        limits = httpx.Limits(max_connections=admitted + late + 4)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                     limits=limits) as client:
            await wait_ready(client, proc)
            work = [asyncio.ensure_future(client.post(
                "/v1/score", json={"sentences": [f"the cat sat {i}"]})) for i in range(admitted)]
            # One request in the stalled engine, the rest queued: all admitted.
            await _until("/metrics", client, "electric_queue_depth", admitted - 1)
            proc.send_signal(signal.SIGTERM)
            for _ in range(100):  # the drain starts on uvicorn's next tick (0.1 s)
                if (await client.get("/readyz")).status_code == 503:
                    break
                await asyncio.sleep(0.02)
            assert "draining" in (await client.get("/readyz")).text
            refused = await asyncio.gather(*(client.post(
                "/v1/score", json={"sentences": ["too late"]}) for _ in range(late)))
            assert all(r.status_code == 503 and "draining" in r.text for r in refused)
            assert proc.poll() is None, "exited with admitted work outstanding"
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            answers = await asyncio.gather(*work)
            counts = collections.Counter(r.status_code for r in answers)
            assert counts == {200: admitted}, counts
            print(f"SIGTERM with {admitted} admitted: {dict(counts)}; {late} late -> 503")

    try:
        asyncio.run(scenario())
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_corrupt_artifact_fails_start_up_with_a_clear_message(fake_artifact: Path,
                                                                  tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(fake_artifact, broken)
    (broken / "model.onnx").write_bytes(b"flipped bits")
    result = subprocess.run(
        [sys.executable, "-c", "from service.server import run; run()"], check=False, cwd=ROOT,
        env=server_env(broken, free_port()), capture_output=True, text=True, timeout=60)
    assert result.returncode == 3, result.stderr  # uvicorn's start-up failure status
    line = next(line for line in result.stderr.splitlines() if "cannot serve" in line)
    assert "sha256" in line and "model.onnx" in line and "the manifest says" in line

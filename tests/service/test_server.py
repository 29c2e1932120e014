"""The real process: uvicorn on loopback, a request over TCP, SIGTERM -> exit status 0."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serves_over_tcp_and_exits_cleanly_on_sigterm(tiny_artifact: Path) -> None:
    port = free_port()
    env = {**os.environ, "ELECTRIC_ARTIFACT": str(tiny_artifact), "ELECTRIC_VARIANT": "fp32",
           "ELECTRIC_PORT": str(port), "ELECTRIC_INTRA_OP_THREADS": "1",
           "ELECTRIC_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "from service.server import run; run()"],
                            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(300):
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            response = client.post("/v1/score", json={"sentences": ["the cat sat"]})
            assert response.status_code == 200
            assert response.json()["results"][0]["num_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

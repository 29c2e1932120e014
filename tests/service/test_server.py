"""The real process: uvicorn on loopback, a request over TCP, SIGTERM -> exit status 0."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
from harness import free_port
from live_server import serve_env, server_process


def test_serves_over_tcp_and_exits_cleanly_on_sigterm(tiny_artifact: Path) -> None:
    port = free_port()
    with server_process(port, serve_env(tiny_artifact)) as proc:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            response = client.post("/v1/score", json={"sentences": ["the cat sat"]})
            assert response.status_code == 200
            assert response.json()["results"][0]["num_tokens"] == 3
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

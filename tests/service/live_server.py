"""A real service on loopback (uvicorn in a subprocess) for client and ``--url`` tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(artifact: Path, **env: str) -> Iterator[str]:
    """The base URL of ``electric serve`` on ``artifact`` (fp32, one thread), once ready."""
    port = free_port()
    environ = {**os.environ, "ELECTRIC_ARTIFACT": str(artifact), "ELECTRIC_VARIANT": "fp32",
               "ELECTRIC_PORT": str(port), "ELECTRIC_INTRA_OP_THREADS": "1",
               "ELECTRIC_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT), **env}
    proc = subprocess.Popen([sys.executable, "-c", "from service.server import run; run()"],
                            env=environ, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(600):
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            else:
                raise AssertionError("the service never turned ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

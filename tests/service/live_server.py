"""A real service on loopback (a server in a subprocess) for client, ``--url`` and process tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
from harness import ROOT, free_port

SERVE = "from service.server import run; run()"
"""What ``electric serve`` runs: the settings come from ELECTRIC_* variables."""


def serve_env(artifact: Path, **extra: str) -> dict[str, str]:
    """Environment for :data:`SERVE` on ``artifact``: fp32, one thread, quiet logs."""
    return {**os.environ, "ELECTRIC_ARTIFACT": str(artifact), "ELECTRIC_VARIANT": "fp32",
            "ELECTRIC_INTRA_OP_THREADS": "1", "ELECTRIC_LOG_LEVEL": "warning",
            "PYTHONPATH": str(ROOT), **extra}


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: IO[bytes]) -> None:
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(600):
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"the server exited during start-up:\n"
                                     f"{log.read().decode(errors='replace')}")
            try:
                if client.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
    raise AssertionError("the service never turned ready")


@contextmanager
def server_process(port: int, env: Mapping[str, str], code: str = SERVE,
                   stdin: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    """``python -c code`` in the repository root, serving on ``port``; yielded once /readyz
    answers 200, and stopped on the way out if it still runs (SIGTERM, then SIGKILL).

    Its output goes to a temporary file, not a pipe nobody reads (a full pipe would stall the
    server), and is shown if it dies during start-up. ``stdin``: a pipe to its standard input.
    """
    with tempfile.TemporaryFile() as log, subprocess.Popen(
            [sys.executable, "-c", code], env={**env, "ELECTRIC_PORT": str(port)}, cwd=ROOT,
            stdin=subprocess.PIPE if stdin else None, stdout=log,
            stderr=subprocess.STDOUT) as proc:
        try:
            _wait_ready(f"http://127.0.0.1:{port}", proc, log)
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@contextmanager
def live_server(artifact: Path, **env: str) -> Iterator[str]:
    """The base URL of ``electric serve`` on ``artifact`` (fp32, one thread), once ready."""
    port = free_port()
    with server_process(port, serve_env(artifact, **env)):
        yield f"http://127.0.0.1:{port}"

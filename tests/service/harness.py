"""Service test plumbing: a fake engine, an in-process client through the lifespan, and
readers for the error shape and Prometheus text.

The fake engine gives each token the energy ``(id % 7) / 7`` so scores are exact and
independent of batching; it can block on a gate (to hold a batch "running"), take a fixed time
per batch (to bound throughput), raise on a poison token or on the next N batches (to inject
faults) and return NaN for rows holding a given token.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from service.app import build_app
from service.model_host import ModelHost

FAKE_MAX_POSITIONS = 32


class FakeEngine:
    """Plumbing only: energies from token ids; optional gate, delay and injected faults."""

    def __init__(self, poison_id: int | None = None, gated: bool = False,
                 delay_s: float = 0.0, nan_id: int | None = None):
        self.variant = "fp32"
        self.providers = ["FakeExecutionProvider"]
        self.poison_id = poison_id
        self.nan_id = nan_id
        self.delay_s = delay_s
        self.failures_left = 0
        """Batches still to fail, whatever they hold (a broken device, not a bad input)."""
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.entered = threading.Event()
        self.shapes: list[tuple[int, int]] = []

    def run(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> NDArray[np.float32]:
        self.shapes.append((int(ids.shape[0]), int(ids.shape[1])))
        self.entered.set()
        assert self.gate.wait(timeout=30), "test never opened the gate"
        if self.delay_s:
            time.sleep(self.delay_s)  # the engine thread, as a real model would hold it
        if self.failures_left > 0:
            self.failures_left -= 1
            raise RuntimeError("injected device fault")
        if self.poison_id is not None and (ids == self.poison_id).any():
            raise RuntimeError("injected engine fault")
        energies = ((ids % 7) / 7.0 * mask).astype(np.float32)  # (B, T)
        if self.nan_id is not None:
            energies[(ids == self.nan_id).any(axis=1)] = np.nan
        return energies

    @staticmethod
    def expected_score(ids: list[int]) -> float:
        return -sum((i % 7) / 7.0 for i in ids)


def _asgi_with_state(app: Any, state: dict[str, Any]) -> Any:
    """httpx's ASGITransport does not carry lifespan state; put it where Starlette looks."""

    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        scope["state"] = dict(state)
        await app(scope, receive, send)

    return asgi


@asynccontextmanager
async def running_app(host: ModelHost, ready: bool = True) -> AsyncIterator[Any]:
    """The ASGI app around ``host`` with its lifespan entered (and warm-up awaited)."""
    app = build_app(host)
    async with app.router.lifespan_context(app) as state:
        if ready:
            await host.wait_warm()
        yield _asgi_with_state(app, dict(state or {}))


@asynccontextmanager
async def serving(host: ModelHost, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """An AsyncClient talking to an app around ``host``, through the app's lifespan."""
    async with running_app(host, ready) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail (rather than hang) after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


ROOT = Path(__file__).resolve().parents[2]

# A server process running the fake engine; a line on its stdin opens the engine's gate.
SERVE_GATED = """
import sys, threading
from harness import FakeEngine
from service.server import run
engine = FakeEngine(gated=True)
threading.Thread(target=lambda: (sys.stdin.readline(), engine.gate.set()), daemon=True).start()
run(engine=engine)
"""


def server_env(artifact: Path, port: int, **extra: str) -> dict[str, str]:
    """Environment for ``python -c SERVE_GATED`` (or ``run()``) in the repository root."""
    return {**os.environ, "ELECTRIC_ARTIFACT": str(artifact), "ELECTRIC_PORT": str(port),
            "ELECTRIC_LOG_LEVEL": "warning", "ELECTRIC_WARMUP": "false",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)]), **extra}


async def wait_ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    """Until the server process answers /readyz with 200 (it has 30 s)."""
    for _ in range(300):
        assert proc.poll() is None, "the server exited during start-up"
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("the server never turned ready")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (for a server subprocess)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def error_of(response: httpx.Response) -> tuple[int, str]:
    """(status, error type), after checking the body has the one error shape."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["message"], body
    return response.status_code, body["error"]["type"]


def metric_value(text: str, series_name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        series, _, rest = key.partition("{")
        if series != series_name:
            continue
        got = ",".join(sorted(p for p in rest.rstrip("}").split(",") if p))
        if got == want:
            return float(value)
    return 0.0

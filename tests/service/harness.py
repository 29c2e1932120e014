"""Service test plumbing: a fake engine, an in-process client through the lifespan, and
readers for the error shape and Prometheus text.

The fake engine gives each token the energy ``(id % 7) / 7`` so scores are exact and
independent of batching; it can block on a gate (to hold a batch "running") and raise on a
poison token (to inject a fault).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from service.app import build_app
from service.runtime import Runtime

FAKE_MAX_POSITIONS = 32


class FakeEngine:
    """Plumbing only: energies from token ids, optional gate and poison token."""

    def __init__(self, poison_id: int | None = None, gated: bool = False):
        self.variant = "fp32"
        self.providers = ["FakeExecutionProvider"]
        self.poison_id = poison_id
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.entered = threading.Event()
        self.shapes: list[tuple[int, int]] = []

    def run(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> NDArray[np.float32]:
        self.shapes.append((int(ids.shape[0]), int(ids.shape[1])))
        self.entered.set()
        assert self.gate.wait(timeout=30), "test never opened the gate"
        if self.poison_id is not None and (ids == self.poison_id).any():
            raise RuntimeError("injected engine fault")
        return ((ids % 7) / 7.0 * mask).astype(np.float32)

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
async def running_app(runtime: Runtime, ready: bool = True) -> AsyncIterator[Any]:
    """The ASGI app around ``runtime`` with its lifespan entered (and warm-up awaited)."""
    app = build_app(runtime)
    async with app.router.lifespan_context(app) as state:
        if ready:
            await runtime.wait_warm()
        yield _asgi_with_state(app, dict(state or {}))


@asynccontextmanager
async def serving(runtime: Runtime, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """An AsyncClient talking to an app around ``runtime``, through the app's lifespan."""
    async with running_app(runtime, ready) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            yield client


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail (rather than hang) after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


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

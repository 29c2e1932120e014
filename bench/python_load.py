"""Load from Python (asyncio, bench/launch.py ``RawClient``), where wrk is not installed.

It runs in the benchmark's own process, on the cores the server uses: at high request rates
the client's CPU time is a real share of the machine's, so figures from it understate the
service; results say which client they come from and what it cost.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from bench.launch import RawClient, score
from bench.timing import percentiles
from bench.wrk import Load


async def closed_loop(port: int, requests: list[list[str]],
                      concurrency: int) -> tuple[float, int, list[float]]:
    """Every request of ``requests`` once, from ``concurrency`` clients each sending its next
    when the last is answered -> (seconds, scored tokens, latencies in seconds)."""
    latencies: list[float] = []
    tokens = 0
    todo = iter(requests)
    clients = [RawClient(port) for _ in range(concurrency)]

    async def worker(client: RawClient) -> None:
        nonlocal tokens
        for batch in todo:
            t0 = time.perf_counter()
            scored = await score(client, batch)  # not `tokens += await ...`: that loses updates
            tokens += scored
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    seconds = time.perf_counter() - start
    for c in clients:
        await c.aclose()
    return seconds, tokens, latencies


class _Tally:
    """Answers as they come: latencies, statuses, and the 200s within ``window`` (seconds
    from now)."""

    def __init__(self, window: tuple[float, float] | None) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors = self.window_ok = 0
        self.start = time.perf_counter()
        self.window = window or (0.0, float("inf"))

    async def send(self, client: RawClient, body: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        try:
            status, _ = await client.post("/v1/score", body)
        except (OSError, asyncio.IncompleteReadError):
            self.errors += 1
            return
        t1 = time.perf_counter()
        self.latencies.append(t1 - t0)
        self.statuses[status] += 1
        if status == 200 and self.window[0] <= t1 - self.start < self.window[1]:
            self.window_ok += 1

    def load(self, connections: int, seconds: float, cpu_s: float, late: int = 0) -> Load:
        q = percentiles(self.latencies or [float("nan")])
        window_s = min(self.window[1], seconds) - self.window[0]
        return Load(connections=connections, requests=len(self.latencies), seconds=seconds,
                    window_ok=self.window_ok, window_s=window_s,
                    non_200={s: n for s, n in self.statuses.items() if s != 200},
                    errors=self.errors, p50_ms=q["p50"], p95_ms=q["p95"], p99_ms=q["p99"],
                    client_cpu_s=cpu_s, late=late)


async def _closed(port: int, bodies: list[dict[str, Any]], connections: int,
                  seconds: float, window: tuple[float, float] | None) -> Load:
    tally, turn = _Tally(window), 0
    clients = [RawClient(port) for _ in range(connections)]
    cpu0, start = time.process_time(), tally.start
    deadline = start + seconds

    async def worker(client: RawClient) -> None:
        nonlocal turn
        while time.perf_counter() < deadline:
            body, turn = bodies[turn % len(bodies)], turn + 1
            await tally.send(client, body)

    await asyncio.gather(*(worker(c) for c in clients))
    took = time.perf_counter() - start
    for c in clients:
        await c.aclose()
    return tally.load(connections, took, time.process_time() - cpu0)


async def _open(port: int, bodies: list[dict[str, Any]], rate: float, seconds: float,
                window: tuple[float, float] | None, seed: int = 0) -> Load:
    """Poisson arrivals at ``rate`` requests/s, independent of how fast answers come, each
    on an idle connection or a new one."""
    rng, tally = random.Random(seed), _Tally(window)
    idle: list[RawClient] = []
    late = opened = 0

    async def one(body: dict[str, Any]) -> None:
        nonlocal opened
        if not idle:
            opened += 1
        client = idle.pop() if idle else RawClient(port)
        await tally.send(client, body)
        idle.append(client)

    tasks = []
    cpu0, start = time.process_time(), tally.start
    next_at = start
    for i in range(max(1, round(rate * seconds))):
        next_at += rng.expovariate(rate)
        wait = next_at - time.perf_counter()
        late += wait < -0.001
        await asyncio.sleep(max(0.0, wait))
        tasks.append(asyncio.ensure_future(one(bodies[i % len(bodies)])))
    await asyncio.gather(*tasks)
    took = time.perf_counter() - start
    for c in idle:
        await c.aclose()
    return tally.load(opened, took, time.process_time() - cpu0, late)


def closed(port: int, bodies: list[dict[str, Any]], connections: int, seconds: float,
           window: tuple[float, float] | None = None) -> Load:
    """``connections`` clients for ``seconds``, bodies round-robin, each client sending its
    next request when the last is answered; 200s counted apart within ``window``."""
    return asyncio.run(_closed(port, bodies, connections, seconds, window))


def open_loop(port: int, bodies: list[dict[str, Any]], rate: float, seconds: float,
              window: tuple[float, float] | None = None) -> Load:
    """``rate`` × ``seconds`` requests at Poisson arrival times, bodies round-robin."""
    return asyncio.run(_open(port, bodies, rate, seconds, window))

"""Overload at several times capacity: refusals are 429 (with Retry-After) or 504, never a 5xx;
every request gets an answer; the queue empties and memory returns to its level (counted in
Python objects, and in resident memory).

A fake engine bounds throughput (a gate holds a batch "running", or a fixed time per batch), so
the load is set by counts, not by how fast this machine happens to be. No timing is asserted.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
from collections.abc import Callable

import httpx
from harness import FakeEngine, eventually, metric_value, serving

from service.model_host import ModelHost
from service.settings import Settings

MakeSettings = Callable[..., Settings]
SHED = {200, 429, 504}


async def _score(client: httpx.AsyncClient, text: str) -> httpx.Response:
    return await client.post("/v1/score", json={"sentences": [text]})


def test_a_burst_past_the_queue_is_refused_at_once_and_the_rest_served(
        fake_settings: MakeSettings) -> None:
    """600 requests at once against a queue of 64 and a stalled engine: exactly those that
    fit are held and served once the engine moves; every other one is refused at once."""
    burst = 600

    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        settings = fake_settings(max_queue=64, max_sentences=8, max_hypotheses=8,
                                 max_batch_size=8, max_concurrent_requests=256)
        host = ModelHost(settings, engine)
        async with serving(host) as client:
            tasks = [asyncio.ensure_future(_score(client, f"the cat {i % 50}"))
                     for i in range(burst)]

            async def all_refused_or_held() -> bool:
                held = host.batcher.depth + (engine.shapes[-1][0] if engine.shapes else 0)
                return sum(t.done() for t in tasks) + held == burst

            try:
                await eventually(all_refused_or_held, timeout_s=60)
                refused = [t.result() for t in tasks if t.done()]
            finally:
                engine.gate.set()
            held = burst - len(refused)
            # The queue, and the batch the engine stalled on (when it took one before the
            # queue filled): nothing more.
            assert 64 <= held <= 64 + 8, held
            assert {r.status_code for r in refused} == {429}
            assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
            answers = await asyncio.gather(*tasks)
            counts = collections.Counter(r.status_code for r in answers)
            assert counts == {200: held, 429: burst - held}, counts
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_rejections_total",
                                reason="overloaded") == burst - held
            assert metric_value(metrics, "electric_queue_depth") == 0
            print(f"burst {burst}: {dict(counts)}")

    asyncio.run(scenario())


def test_sustained_overload_sheds_load_and_memory_returns(fake_settings: MakeSettings) -> None:
    """300 clients in a closed loop against an engine taking 50 ms per batch of up to 8, a
    queue of 32 sequences and at most 128 requests at once: only 200/429/504, all 1,200
    answered, nothing left over after."""
    clients, rounds = 300, 4

    async def scenario() -> None:
        engine = FakeEngine(delay_s=0.05)
        settings = fake_settings(max_queue=32, max_sentences=8, max_hypotheses=8,
                                 max_batch_size=8, request_timeout_s=0.5,
                                 max_concurrent_requests=128)
        host = ModelHost(settings, engine)
        async with serving(host) as client:

            async def user(i: int) -> list[int]:
                return [(await _score(client, f"the dog ran {i} {r}")).status_code
                        for r in range(rounds)]

            # Warm-up at the same load, so that lazily built state (label sets, caches,
            # pools) exists before the baseline is taken.
            await asyncio.gather(*(user(i) for i in range(clients)))
            await eventually(lambda: _quiet(client))
            gc.collect()
            objects, rss = len(gc.get_objects()), _rss_bytes()
            start = asyncio.get_running_loop().time()
            statuses = [s for ss in await asyncio.gather(*(user(i) for i in range(clients)))
                        for s in ss]
            elapsed = asyncio.get_running_loop().time() - start
            await eventually(lambda: _quiet(client))
            gc.collect()
            left = len(gc.get_objects()) - objects
            counts = collections.Counter(statuses)
            assert len(statuses) == clients * rounds, "every request is answered"
            assert set(counts) <= SHED, counts
            assert counts[200] > 0 and counts[429] > 0, counts
            assert host.batcher.depth == 0
            # Nothing of 1,200 requests is kept: not a future, a job, a task or a buffer.
            # (Objects are counted exactly; RSS only moves with the allocator's arenas.)
            assert left < 100, f"{left} objects left behind by the load"
            assert _rss_bytes() - rss < 16 << 20, "resident memory grew"
            print(f"sustained {clients} clients x {rounds}: {dict(counts)} in {elapsed:.2f} s, "
                  f"{counts[200] / elapsed:.0f} served/s; objects "
                  f"{left:+d}, RSS {(_rss_bytes() - rss) >> 10:+d} KiB")
            # Still serving normally.
            assert (await _score(client, "the cat sat")).status_code == 200

    asyncio.run(scenario())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _quiet(client: httpx.AsyncClient) -> bool:
    metrics = (await client.get("/metrics")).text
    # 1: this very /metrics request.
    return (metric_value(metrics, "electric_in_flight_requests") == 1
            and metric_value(metrics, "electric_queue_depth") == 0)

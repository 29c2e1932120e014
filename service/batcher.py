"""The asyncio loop around the batching policy: one task, one bounded queue, one engine thread.

Requests add their sequences to the queue and await a future. The loop takes the next batch
(service/batching.py decides which), runs the engine in a worker thread and hands each request
its rows. While a batch runs, new work piles up, so the next batch is large exactly when the
service is busy; when the queue is empty the loop sleeps on an event, never on a timer.
Futures are only touched on the loop thread, and a future that is already done (its client
left, its deadline passed) is skipped, never an error. An engine error fails the batch it hit
and nothing else; a row of non-finite energies fails the request holding it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from service.batching import BatchLimits, next_batch, pad, padded_cost
from service.engine import EnergyEngine
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.metrics import Metrics

logger = logging.getLogger("electric.service")

Energies = NDArray[np.float32]

# Consecutive failed batches after which the engine counts as failing (readiness turns 503
# until a batch succeeds). One bad batch can be one bad input; three in a row rarely are.
FAILING_AFTER = 3


@dataclass(eq=False)
class _Job:
    """One request's sequences; its future resolves when the last of them comes back."""

    future: asyncio.Future[list[Energies]]
    deadline: float
    pending: int
    results: list[Energies | None] = field(default_factory=list)

    def deliver(self, slot: int, energies: Energies) -> None:
        if self.future.done():
            return
        self.results[slot] = energies
        self.pending -= 1
        if self.pending == 0:
            self.future.set_result([r for r in self.results if r is not None])

    def fail(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(eq=False, slots=True)
class _Seq:
    job: _Job
    slot: int
    ids: NDArray[np.int64]
    enqueued: float


class Batcher:
    def __init__(self, engine: EnergyEngine, limits: BatchLimits, pad_id: int, max_queue: int,
                 metrics: Metrics):
        self._engine = engine
        self._limits = limits
        self._pad_id = pad_id
        self._max_queue = max_queue
        self._metrics = metrics
        self._queue: deque[_Seq] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._rate = 0.0  # sequences per second, smoothed; sizes Retry-After
        self._failures = 0  # batches failed in a row
        self._task: asyncio.Task[None] | None = None
        # One thread: the engine runs one batch at a time and uses its own intra-op threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="electric-engine")

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def failing(self) -> bool:
        """The last FAILING_AFTER batches all failed: the engine, not an input, is broken."""
        return self._failures >= FAILING_AFTER

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="electric-batcher")

    def submit(self, seqs: Sequence[NDArray[np.int64]],
               timeout_s: float) -> asyncio.Future[list[Energies]]:
        """Queue a request's sequences; refuse at once when closed (503) or full (429)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Energies]] = loop.create_future()
        if not seqs:
            future.set_result([])
            return future
        if self._closed or not self.alive:
            raise NotReady("the service is shutting down and takes no new work")
        if len(self._queue) + len(seqs) > self._max_queue:
            # Make room by forgetting work nobody waits for any more, before refusing.
            self._queue = deque(self._drop_dead(list(self._queue), loop.time()))
        if len(self._queue) + len(seqs) > self._max_queue:
            raise Overloaded(
                f"the queue holds {len(self._queue)} sequences; {len(seqs)} more would pass "
                f"its limit of {self._max_queue}", retry_after_s=self._retry_after())
        now = loop.time()
        job = _Job(future, deadline=now + timeout_s, pending=len(seqs),
                   results=[None] * len(seqs))
        self._queue.extend(_Seq(job, slot, ids, now) for slot, ids in enumerate(seqs))
        self._metrics.queue_depth.set(len(self._queue))
        self._wake.set()
        return future

    async def score(self, seqs: Sequence[NDArray[np.int64]],
                    timeout_s: float) -> list[Energies]:
        """Energies (one (T,) row per sequence, specials included) within ``timeout_s``."""
        future = self.submit(seqs, timeout_s)
        try:
            # On timeout or when the caller is cancelled, wait_for cancels the future; the
            # loop then drops the request's queued sequences unrun.
            return await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(
                f"not scored within the request deadline of {timeout_s:g} s") from None

    async def close(self) -> None:
        """Stop the loop; whatever is still queued gets 503."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue:
            self._queue.popleft().job.fail(NotReady("the service shut down before this ran"))
        self._metrics.queue_depth.set(0)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    def _drop_dead(self, seqs: list[_Seq], now: float) -> list[_Seq]:
        """Fail expired jobs, forget sequences whose job is done; return the live ones."""
        live = []
        for seq in seqs:
            if not seq.job.future.done() and seq.job.deadline <= now:
                seq.job.fail(DeadlineExceeded("the request deadline passed while it was queued"))
            if not seq.job.future.done():
                live.append(seq)
        return live

    def _take_batch(self) -> list[_Seq]:
        loop = asyncio.get_running_loop()
        window = [self._queue.popleft()
                  for _ in range(min(self._limits.sort_window, len(self._queue)))]
        window = self._drop_dead(window, loop.time())
        picked = set(next_batch([len(s.ids) for s in window], self._limits))
        self._queue.extendleft(reversed([s for i, s in enumerate(window) if i not in picked]))
        self._metrics.queue_depth.set(len(self._queue))
        return [s for i, s in enumerate(window) if i in picked]

    async def _run(self, batch: list[_Seq]) -> None:
        loop = asyncio.get_running_loop()
        ids, mask = pad([s.ids for s in batch], self._pad_id)  # (B, T) each
        start = loop.time()
        for seq in batch:
            self._metrics.queue_wait.observe(start - seq.enqueued)
        try:
            energies = await loop.run_in_executor(self._executor, self._engine.run, ids, mask)
            if energies.shape != ids.shape:
                raise ValueError(f"engine returned shape {energies.shape} for input {ids.shape}")
        except asyncio.CancelledError:
            for seq in batch:
                seq.job.fail(NotReady("the service shut down while this ran"))
            raise
        except Exception:
            # Only this batch's requests fail; the loop and the queue carry on.
            logger.exception("inference failed on a batch of %s", ids.shape)
            self._failures += 1
            self._metrics.inference_failures.labels(kind="batch_error").inc()
            for seq in batch:
                seq.job.fail(InferenceFailed("inference failed on the batch holding this request"))
            return
        finally:
            elapsed = loop.time() - start
            self._metrics.observe_batch(len(batch), int(mask.sum()), padded_cost(
                [len(s.ids) for s in batch]), elapsed)
        self._failures = 0
        self._rate = 0.8 * self._rate + 0.2 * len(batch) / max(elapsed, 1e-6)
        for row, seq in enumerate(batch):
            energies_row = energies[row, :len(seq.ids)]  # (T,) padding cut off
            if np.isfinite(energies_row).all():
                seq.job.deliver(seq.slot, energies_row)
                continue
            # A score of inf or NaN is no answer, and JSON cannot carry it anyway.
            logger.error("the engine returned non-finite energies for a row of %s", ids.shape)
            self._metrics.inference_failures.labels(kind="non_finite_row").inc()
            seq.job.fail(InferenceFailed("the model returned non-finite energies for a "
                                         "sentence of this request"))

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained, from the recent batch throughput."""
        if self._rate <= 0:
            return 1
        return max(1, min(60, math.ceil(len(self._queue) / self._rate)))

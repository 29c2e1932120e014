"""The asyncio loop around the batching policy: one task, one bounded queue, engine threads.

Requests add their sequences to the queue and await a future. The loop takes the next batch
(service/batch_policy.py decides which), runs the engine in a worker thread (up to ``parallel``
batches at once, and ``ahead`` more formed and waiting for a free thread) and hands each
request its rows. Which request goes next is fewest sentences left first: a request of a few
sentences is not made to wait behind one of 256, and requests with as many sentences left go
in arrival order whatever their lengths, which answers the most of them in time when the
engine is overloaded (a round robin answered fewer; ordering by tokens left instead starved the
longer sentences of a stream of one-sentence requests for seconds: docs/SERVICE.md has both).
A request that has waited half its deadline goes first whatever its size, oldest first, so
that the large ones that ``max_request_tokens`` admits are not starved by a stream of small
ones. While a batch runs, new work piles up, so the next batch is large exactly when the
service is busy; when the queue is empty the loop sleeps on an event, never on a timer.

Futures are only touched on the loop thread (an engine thread only asks whether they are
done), and a future that is already done (its client left, its deadline passed) is skipped,
never an error. An engine error fails the batch it hit and nothing else; a row of non-finite
energies fails the request holding it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from service.batch_policy import BatchLimits, next_batch, pad, padded_cost
from service.engine import EnergyEngine
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.metrics import Metrics

logger = logging.getLogger("electric.service")

Energies = NDArray[np.float32]

# Consecutive failed batches after which the engine counts as failing (readiness turns 503
# until a batch succeeds). One bad batch can be one bad input; three in a row rarely are.
FAILING_AFTER = 3
# After waiting this share of its deadline a request goes before smaller ones. The request
# limit leaves it the other half at the full engine (service/model_host.py _REQUEST_SHARE).
AGED_AFTER = 0.5


class Timing(Protocol):
    """Where a request's time went, for the x-queue-time / x-inference-time headers."""

    queue_s: float
    inference_s: float


@dataclass(eq=False)
class _Job:
    """One request's sequences; its future resolves when the last of them comes back."""

    future: asyncio.Future[list[Energies]]
    deadline: float
    pending: int
    enqueued: float
    results: list[Energies | None] = field(default_factory=list)
    queued: deque[_Seq] = field(default_factory=deque)
    """Its sequences not yet taken into a batch, in order."""
    started: float | None = None
    """When its first batch started; ``finished`` when its last one ended."""
    finished: float | None = None

    @property
    def dead(self) -> bool:
        return self.future.done()

    def priority(self, now: float) -> tuple[float, ...]:
        """Sort key, first goes first: aged requests oldest first, then the fewest sentences
        left, then the oldest."""
        if now >= self.enqueued + AGED_AFTER * (self.deadline - self.enqueued):
            return (0, self.enqueued)
        return (1, len(self.queued), self.enqueued)

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


@dataclass(eq=False, slots=True)
class _Formed:
    """A batch out of the queue; until an engine thread takes it, its sequences still wait."""

    seqs: list[_Seq]
    running: bool = False
    skipped: bool = False
    """Every request in it was done (gone, expired) when a thread took it: it never ran."""


def _expire(job: _Job, timeout_s: float) -> None:
    """A job's deadline passed: its caller gets the refusal (the error is made only then)."""
    job.fail(DeadlineExceeded(f"not scored within the request deadline of {timeout_s:g} s"))


class Batcher:
    def __init__(self, engine: EnergyEngine, limits: BatchLimits, pad_id: int, max_queue: int,
                 metrics: Metrics, parallel: int = 1, ahead: int = 0):
        self._engine = engine
        self._limits = limits
        self._pad_id = pad_id
        self._max_queue = max_queue
        self._metrics = metrics
        # Requests with sequences still queued, in arrival order; _take_batch picks among them.
        self._jobs: deque[_Job] = deque()
        self._depth = 0  # sequences queued, over all jobs
        self._formed: set[_Formed] = set()  # batches taken and not yet done
        self._wake = asyncio.Event()
        self._closed = False
        self._rate = 0.0  # sequences per second, smoothed; sizes Retry-After
        self._failures = 0  # batches failed in a row
        self._task: asyncio.Task[None] | None = None
        # One thread per batch that may run at once (the engine's parallel_runs): on a GPU one,
        # which uses the device; on a CPU one per share of the cores.
        if parallel < 1:
            raise ValueError(f"parallel is {parallel}; at least one batch must run")
        self._parallel = parallel
        # Batches formed before a run is free for them, waiting in the executor's queue: an
        # engine thread that finishes starts the next one at once, instead of waiting for the
        # event loop to get round to its completion (behind whatever else is ready) and hand
        # it a batch. The price: such a batch is formed a run earlier, so it holds fewer of
        # the requests that arrive meanwhile.
        if ahead < 0:
            raise ValueError(f"ahead is {ahead}; it cannot be negative")
        self._ahead = ahead
        self._executor = ThreadPoolExecutor(max_workers=parallel,
                                            thread_name_prefix="electric-engine")
        # Read when scraped: an engine thread taking a batch formed ahead changes it too.
        metrics.queue_depth.set_function(lambda: self.depth)

    @property
    def depth(self) -> int:
        """Sequences waiting for the engine: queued, or in a batch formed ahead that no engine
        thread has taken yet."""
        return self._depth + sum(len(f.seqs) for f in self._formed if not f.running)

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
        return self._enqueue(seqs, timeout_s).future

    def _enqueue(self, seqs: Sequence[NDArray[np.int64]], timeout_s: float) -> _Job:
        loop = asyncio.get_running_loop()
        now = loop.time()
        job = _Job(loop.create_future(), deadline=now + timeout_s, pending=len(seqs),
                   enqueued=now, results=[None] * len(seqs))
        if not seqs:
            job.future.set_result([])
            return job
        if self._closed or not self.alive:
            raise NotReady("the service is shutting down and takes no new work")
        if self.depth + len(seqs) > self._max_queue:
            self._drop_dead(now)  # make room by forgetting work nobody waits for any more
        depth = self.depth
        if depth + len(seqs) > self._max_queue:
            raise Overloaded(
                f"the queue holds {depth} sequences; {len(seqs)} more would pass "
                f"its limit of {self._max_queue}", retry_after_s=self._retry_after())
        job.queued.extend(_Seq(job, slot, ids) for slot, ids in enumerate(seqs))
        self._jobs.append(job)
        self._depth += len(seqs)
        self._wake.set()
        return job

    async def score(self, seqs: Sequence[NDArray[np.int64]], timeout_s: float,
                    timing: Timing | None = None) -> list[Energies]:
        """Energies (one (T,) row per sequence, specials included) within ``timeout_s``;
        ``timing`` gets the request's time in the queue and in batches added to it."""
        job = self._enqueue(seqs, timeout_s)
        # At the deadline the job fails; when the caller is cancelled, so is the future it
        # awaits. Either way the job is done and the loop drops its queued sequences unrun.
        # (One timer, not asyncio.wait_for's future, callbacks and timer per request.)
        expiry = asyncio.get_running_loop().call_at(job.deadline, _expire, job, timeout_s)
        try:
            return await job.future
        finally:
            expiry.cancel()
            if timing is not None and job.started is not None:
                timing.queue_s += job.started - job.enqueued
                timing.inference_s += (job.finished or job.started) - job.started

    async def close(self) -> None:
        """Stop the loop; whatever is still queued gets 503."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._jobs:
            self._jobs.popleft().fail(NotReady("the service shut down before this ran"))
        self._depth = 0
        self._formed.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _loop(self) -> None:
        """Take a batch whenever one of the ``parallel`` runs (or one of the ``ahead`` places
        behind them) is free and work is queued. A batch is taken only then, so the next batch
        is formed from all that arrived meanwhile. When several runs are free, the queue is
        shared out among them: a burst that arrives at an idle engine runs as that many
        batches at once, not as one batch beside idle threads."""
        free = asyncio.Semaphore(self._parallel + self._ahead)
        running: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            free.release()

        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._jobs:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                await free.acquire()
                idle = self._parallel - len(running)
                rows = math.ceil(self._depth / idle) if idle > 1 else None
                batch = self._take_batch(rows) if self._jobs else []
                if not batch:
                    free.release()
                    continue
                task = loop.create_task(self._run(batch))
                running.add(task)
                task.add_done_callback(finished)
        finally:  # shutting down: the batches in flight fail with 503, as the queue does
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    def _drop_dead(self, now: float) -> None:
        """Fail expired jobs and forget every job that is done (its client left, its deadline
        passed, one of its rows failed), with its queued sequences."""
        live: deque[_Job] = deque()
        for job in self._jobs:
            if not job.dead and job.deadline <= now:
                job.fail(DeadlineExceeded("the request deadline passed while it was queued"))
            if job.dead:
                self._depth -= len(job.queued)
            else:
                live.append(job)
        self._jobs = live

    def _window(self, now: float) -> list[_Seq]:
        """Up to ``sort_window`` queued sequences, the requests' in priority order; the first
        request's first sequence comes first, so every batch holds it."""
        window: list[_Seq] = []
        for job in sorted(self._jobs, key=lambda job: job.priority(now)):
            window.extend(itertools.islice(job.queued, self._limits.sort_window - len(window)))
            if len(window) == self._limits.sort_window:
                break
        return window

    def _take_batch(self, rows: int | None = None) -> list[_Seq]:
        """The next batch out of the queue; at most ``rows`` sequences when given."""
        now = asyncio.get_running_loop().time()
        self._drop_dead(now)
        window = self._window(now)
        limits = self._limits
        if rows is not None and rows < limits.max_batch_size:
            limits = dataclasses.replace(limits, max_batch_size=max(rows, 1))
        batch = [window[i] for i in next_batch([len(s.ids) for s in window], limits)]
        taken = {id(s) for s in batch}
        in_window = Counter(id(s.job) for s in window)  # each job's window share is its head
        for job in {id(s.job): s.job for s in batch}.values():
            head = [job.queued.popleft() for _ in range(in_window[id(job)])]
            job.queued.extendleft(reversed([s for s in head if id(s) not in taken]))
        self._depth -= len(batch)
        self._jobs = deque(job for job in self._jobs if job.queued)
        return batch

    async def _run(self, batch: list[_Seq]) -> None:
        loop = asyncio.get_running_loop()
        ids, mask = pad([s.ids for s in batch], self._pad_id)  # (B, T) each
        formed = _Formed(batch)
        self._formed.add(formed)
        # Replaced by when the engine thread took the batch: with batches formed ahead, it may
        # wait in the executor's queue first, which is queueing, not inference.
        start, elapsed = loop.time(), 0.0
        try:
            start, energies = await loop.run_in_executor(self._executor, _timed_run,
                                                         self._engine, formed, ids, mask)
            if energies is not None and energies.shape != ids.shape:
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
            self._formed.discard(formed)
            if not formed.skipped:
                elapsed = self._observe(batch, start, loop.time(), int(mask.sum()))
        if energies is None:  # skipped: nobody waited for it any more
            return
        self._failures = 0
        # Several batches may run at once: the queue drains that many times one's rate.
        self._rate = 0.8 * self._rate + 0.2 * self._parallel * len(batch) / max(elapsed, 1e-6)
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

    def _observe(self, batch: list[_Seq], start: float, end: float, tokens: int) -> float:
        """Stamp the batch's requests with when it started and ended, count it in the
        metrics; its run time. The thread reads time.monotonic, the clock of asyncio's loop
        and, cached to the millisecond, uvloop's, which may lag the thread's by less than 1 ms."""
        start = min(start, end)
        for seq in batch:
            self._metrics.queue_wait.observe(start - seq.job.enqueued)
            if seq.job.started is None:
                seq.job.started = start
            seq.job.finished = end
        self._metrics.observe_batch(len(batch), tokens, padded_cost([len(s.ids) for s in batch]),
                                    end - start)
        return end - start

    def _retry_after(self) -> int:
        """Seconds until the queue has likely drained, from the recent batch throughput."""
        if self._rate <= 0:
            return 1
        return max(1, min(60, math.ceil(self.depth / self._rate)))


def _timed_run(engine: EnergyEngine, formed: _Formed, ids: NDArray[np.int64],
               mask: NDArray[np.int64]) -> tuple[float, Energies | None]:
    """In the engine thread: when the run started (``time.monotonic``), and its energies; None
    when every request in the batch was already done, which a batch formed ahead can be.

    The thread only reads whether futures are done (a done future stays done, so a stale
    answer runs a batch nobody needs, nothing worse) and sets two flags, single stores that
    the loop reads.
    """
    formed.running = True
    start = time.monotonic()
    if all(seq.job.dead for seq in formed.seqs):
        formed.skipped = True
        return start, None
    return start, engine.run(ids, mask)

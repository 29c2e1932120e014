"""The batching loop with a fake engine: plumbing, queue bounds, deadlines, faults."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from harness import FakeEngine

from service.batch_policy import BatchLimits
from service.batcher import Batcher
from service.errors import DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.metrics import Metrics


def seq(*ids: int) -> np.ndarray:
    return np.array([2, *ids, 3], dtype=np.int64)


def make(engine: FakeEngine, max_queue: int = 64, tokens: int = 1024,
         size: int = 64, ahead: int = 0) -> Batcher:
    return Batcher(engine, BatchLimits(tokens, size, 64), pad_id=0, max_queue=max_queue,
                   metrics=Metrics(), ahead=ahead)


def expected(ids: np.ndarray) -> list[float]:
    return [(i % 7) / 7.0 for i in ids.tolist()]


def same_rows(got: list[np.ndarray], seqs: list[np.ndarray]) -> bool:
    return len(got) == len(seqs) and all(
        r.shape == s.shape and np.allclose(r, expected(s)) for r, s in zip(got, seqs))


def test_rows_come_back_to_their_requests_unpadded() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        batcher = make(engine)
        batcher.start()
        a, b = [seq(10, 11), seq(12)], [seq(13, 14, 15, 16)]
        got_a, got_b = await asyncio.gather(batcher.score(a, 5), batcher.score(b, 5))
        assert same_rows(got_a, a) and same_rows(got_b, b)
        assert await batcher.score([], 5) == []
        await batcher.close()

    asyncio.run(scenario())


def test_idle_engine_runs_at_once_and_busy_engine_batches_what_piled_up() -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        batcher = make(engine)
        batcher.start()
        first = asyncio.ensure_future(batcher.score([seq(10)], 5))
        await asyncio.to_thread(engine.entered.wait, 5)
        assert engine.shapes == [(1, 3)], "an idle batcher runs the first request alone"
        rest = [asyncio.ensure_future(batcher.score([seq(11, 12)], 5)) for _ in range(5)]
        await asyncio.sleep(0)
        assert batcher.depth == 5
        engine.gate.set()
        await asyncio.gather(first, *rest)
        assert engine.shapes == [(1, 3), (5, 4)], "work queued behind a busy engine shares a batch"
        await batcher.close()

    asyncio.run(scenario())


def test_a_request_may_be_split_across_batches() -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        batcher = make(engine, size=2)
        batcher.start()
        seqs = [seq(10 + i) for i in range(5)]
        got = await batcher.score(seqs, 5)
        assert same_rows(got, seqs)
        assert sorted(b for b, _ in engine.shapes) == [1, 2, 2]
        await batcher.close()

    asyncio.run(scenario())


def test_full_queue_refuses_with_retry_after() -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        batcher = make(engine, max_queue=3)
        batcher.start()
        running = asyncio.ensure_future(batcher.score([seq(10)], 5))
        await asyncio.to_thread(engine.entered.wait, 5)
        queued = asyncio.ensure_future(batcher.score([seq(11), seq(12)], 5))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as refused:
            batcher.submit([seq(13), seq(14)], 5)
        assert refused.value.retry_after_s >= 1
        assert "3" in refused.value.message
        engine.gate.set()
        await asyncio.gather(running, queued)
        await batcher.close()

    asyncio.run(scenario())


def test_cancelled_and_expired_work_never_reaches_the_engine() -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        batcher = make(engine)
        batcher.start()
        running = asyncio.ensure_future(batcher.score([seq(10)], 5))
        await asyncio.to_thread(engine.entered.wait, 5)
        gone = asyncio.ensure_future(batcher.score([seq(20, 21, 22)], 5))
        expired = asyncio.ensure_future(batcher.score([seq(30, 31, 32, 33, 34)], 0.05))
        await asyncio.sleep(0)
        gone.cancel()  # the client went away
        with pytest.raises(DeadlineExceeded):
            await expired
        engine.gate.set()
        await running
        kept = await batcher.score([seq(40)], 5)
        assert len(kept) == 1
        assert engine.shapes == [(1, 3), (1, 3)], "only live work ran"
        assert gone.cancelled()
        await batcher.close()

    asyncio.run(scenario())


def test_an_engine_fault_fails_only_its_batch() -> None:
    async def scenario() -> None:
        engine = FakeEngine(poison_id=99)
        batcher = make(engine, size=1)
        batcher.start()
        results = await asyncio.gather(batcher.score([seq(10)], 5), batcher.score([seq(99)], 5),
                                       batcher.score([seq(11)], 5), return_exceptions=True)
        assert isinstance(results[1], InferenceFailed)
        assert not isinstance(results[0], BaseException)
        assert not isinstance(results[2], BaseException)
        assert batcher.alive
        assert len(await batcher.score([seq(12)], 5)) == 1
        await batcher.close()

    asyncio.run(scenario())


def test_a_wrong_shape_from_the_engine_is_a_fault_not_a_crash() -> None:
    class Truncating(FakeEngine):
        def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return super().run(ids, mask)[:, :1]

    async def scenario() -> None:
        batcher = make(Truncating())
        batcher.start()
        with pytest.raises(InferenceFailed):
            await batcher.score([seq(10, 11)], 5)
        assert batcher.alive
        await batcher.close()

    asyncio.run(scenario())


def test_close_fails_queued_work_and_refuses_more() -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        batcher = make(engine)
        batcher.start()
        running = asyncio.ensure_future(batcher.score([seq(10)], 5))
        await asyncio.to_thread(engine.entered.wait, 5)
        queued = asyncio.ensure_future(batcher.score([seq(11)], 5))
        await asyncio.sleep(0)
        await batcher.close()
        engine.gate.set()
        for fut in (running, queued):
            with pytest.raises(NotReady):
                await fut
        with pytest.raises(NotReady):
            batcher.submit([seq(12)], 5)

    asyncio.run(scenario())


def test_a_small_request_is_not_stuck_behind_a_large_one() -> None:
    """The small request queued after a 40-sequence one runs in the very next batch, and the
    large one still gets every row back in order."""
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        batcher = Batcher(engine, BatchLimits(16, 4, 64), pad_id=0, max_queue=64,
                          metrics=Metrics())  # 4 sequences of 4 positions per batch
        batcher.start()
        opener = asyncio.ensure_future(batcher.score([seq(9, 9)], 5))
        await asyncio.to_thread(engine.entered.wait, 5)
        large = [seq(10 + i, 11) for i in range(40)]
        big = asyncio.ensure_future(batcher.score(large, 5))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(batcher.score([seq(50, 51)], 5))
        await asyncio.sleep(0)
        left_when_small_done: list[int] = []
        small.add_done_callback(lambda _: left_when_small_done.append(batcher.depth))
        engine.gate.set()
        assert same_rows(await small, [seq(50, 51)])
        # First in, first out would have run all 40 first (0 left); least work first put the
        # small request into the first batch after the opener; a few more batches of the large
        # one may start before its answer is seen, but nowhere near all ten.
        assert left_when_small_done[0] >= 20
        assert same_rows(await big, large)
        await opener
        assert batcher.depth == 0
        await batcher.close()

    asyncio.run(scenario())


def test_least_work_goes_first_until_a_request_has_waited_half_its_deadline() -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        batcher = Batcher(engine, BatchLimits(1024, 2, 64), pad_id=0, max_queue=64,
                          metrics=Metrics())
        batcher.start()
        opener = asyncio.ensure_future(batcher.score([seq(9)], 5))
        await asyncio.to_thread(engine.entered.wait, 5)
        big = asyncio.ensure_future(batcher.score([seq(10), seq(11), seq(12)], 0.4))
        await asyncio.sleep(0)
        small = asyncio.ensure_future(batcher.score([seq(20)], 5))
        equal = asyncio.ensure_future(batcher.score([seq(30)], 5))
        await asyncio.sleep(0)
        # What the loop takes next, taken by hand while the engine is held: the two one-sequence
        # requests (in arrival order) before the three-sequence one that came first.
        first = batcher._take_batch()
        assert [int(s.ids[1]) for s in first] == [20, 30]
        await asyncio.sleep(0.25)  # past half of big's 0.4 s deadline: it is aged
        late = asyncio.ensure_future(batcher.score([seq(40)], 5))
        await asyncio.sleep(0)
        second = batcher._take_batch()
        assert [int(s.ids[1]) for s in second] == [10, 11], "the aged request goes first"
        assert batcher.depth == 2
        for s in first + second:  # hand the rows back as the loop would
            s.job.deliver(s.slot, np.asarray(expected(s.ids), dtype=np.float32))
        engine.gate.set()
        await asyncio.gather(opener, big, small, equal, late)
        await batcher.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("ahead", [0, 1])
def test_timing_splits_queue_wait_from_inference(ahead: int) -> None:
    # With a batch formed ahead, the second request waits in the engine's own queue, not the
    # batcher's: that is still queueing, and the inference time is the run's alone.
    class Times:
        queue_s = 0.0
        inference_s = 0.0

    async def scenario() -> None:
        engine = FakeEngine(delay_s=0.05)
        batcher = make(engine, ahead=ahead)
        batcher.start()
        first = asyncio.ensure_future(batcher.score([seq(9)], 5))
        await asyncio.sleep(0.01)
        times = Times()
        await batcher.score([seq(10, 11)], 5, timing=times)
        await first
        assert times.queue_s >= 0.02, "it waited behind the first batch"
        assert 0.04 <= times.inference_s < 0.09, "one run, without the wait before it"
        await batcher.close()

    asyncio.run(scenario())


def test_a_long_sentence_is_not_starved_by_a_stream_of_short_ones() -> None:
    # One-sentence requests go in arrival order whatever their lengths: ordering by tokens
    # left made a long sentence wait behind every short one that came after it.
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        batcher = Batcher(engine, BatchLimits(1024, 2, 64, max_padding=0.05), pad_id=0,
                          max_queue=64, metrics=Metrics())
        batcher.start()
        opener = asyncio.ensure_future(batcher.score([seq(9)], 5))
        await asyncio.to_thread(engine.entered.wait, 5)
        long = asyncio.ensure_future(batcher.score([seq(*range(10, 40))], 5))
        await asyncio.sleep(0)
        shorts = [asyncio.ensure_future(batcher.score([seq(50 + i)], 5)) for i in range(6)]
        await asyncio.sleep(0)
        first = batcher._take_batch()
        assert [len(s.ids) for s in first] == [32], "the oldest request anchors the batch"
        for s in first:
            s.job.deliver(s.slot, np.asarray(expected(s.ids), dtype=np.float32))
        engine.gate.set()
        await asyncio.gather(opener, long, *shorts)
        await batcher.close()

    asyncio.run(scenario())


class CountingEngine(FakeEngine):
    """Counts how many batches are inside ``run`` at once."""

    def __init__(self, gated: bool = True):
        super().__init__(gated=gated)
        self._lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.two_inside = threading.Event()

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            if self.inside >= 2:
                self.two_inside.set()
        try:
            return super().run(ids, mask)
        finally:
            with self._lock:
                self.inside -= 1


@pytest.mark.parametrize(("parallel", "ahead"), [(1, 0), (2, 0), (3, 0), (1, 1), (2, 2)])
def test_up_to_parallel_batches_run_at_once(parallel: int, ahead: int) -> None:
    # Batches formed ahead wait for a free run; until one takes them they count as queued.
    async def scenario() -> None:
        engine = CountingEngine()
        batcher = Batcher(engine, BatchLimits(1024, 1, 64), pad_id=0, max_queue=64,
                          metrics=Metrics(), parallel=parallel, ahead=ahead)
        batcher.start()
        seqs = [seq(10 + i, 11 + i) for i in range(6)]
        jobs = [asyncio.ensure_future(batcher.score([s], 5)) for s in seqs]
        await asyncio.sleep(0.2)  # every free run has taken its batch by now
        assert engine.inside == parallel and batcher.depth == 6 - parallel
        engine.gate.set()
        for job, s in zip(jobs, seqs):
            assert same_rows(await job, [s])
        assert engine.most_inside == parallel
        await batcher.close()

    asyncio.run(scenario())


def test_a_batch_formed_ahead_starts_when_a_run_ends_without_what_came_after_it() -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        batcher = make(engine, ahead=1)
        batcher.start()
        first = asyncio.ensure_future(batcher.score([seq(10)], 5))
        await asyncio.to_thread(engine.entered.wait, 5)
        second = asyncio.ensure_future(batcher.score([seq(11, 12)], 5))
        await asyncio.sleep(0.05)  # formed ahead, alone, behind the running batch
        assert batcher.depth == 1
        third = asyncio.ensure_future(batcher.score([seq(13, 14)], 5))
        await asyncio.sleep(0)
        assert batcher.depth == 2
        engine.gate.set()
        await asyncio.gather(first, second, third)
        assert engine.shapes == [(1, 3), (1, 4), (1, 4)], "without ahead: (1, 3), (2, 4)"
        assert batcher.depth == 0
        await batcher.close()

    asyncio.run(scenario())


def test_a_batch_formed_ahead_whose_requests_left_never_runs() -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        batcher = make(engine, ahead=1)
        batcher.start()
        first = asyncio.ensure_future(batcher.score([seq(10)], 5))
        await asyncio.to_thread(engine.entered.wait, 5)
        gone = asyncio.ensure_future(batcher.score([seq(11, 12)], 5))
        await asyncio.sleep(0.05)  # formed ahead, waiting for the run
        gone.cancel()
        engine.gate.set()
        await first
        later = await batcher.score([seq(13, 14, 15)], 5)
        assert same_rows(later, [seq(13, 14, 15)])
        assert engine.shapes == [(1, 3), (1, 5)], "the left request's batch was skipped"
        await batcher.close()

    asyncio.run(scenario())


def test_a_burst_at_an_idle_engine_is_shared_out_among_its_free_runs() -> None:
    async def scenario() -> None:
        engine = CountingEngine()
        batcher = Batcher(engine, BatchLimits(1024, 64, 64), pad_id=0, max_queue=64,
                          metrics=Metrics(), parallel=2)
        batcher.start()
        burst = [asyncio.ensure_future(batcher.score([seq(10 + i)], 5)) for i in range(6)]
        await asyncio.to_thread(engine.two_inside.wait, 5)
        engine.gate.set()
        await asyncio.gather(*burst)
        assert sorted(engine.shapes) == [(3, 3), (3, 3)], "not (6, 3) beside an idle run"
        await batcher.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("ahead", [0, 1])
def test_close_fails_the_batches_in_flight_and_the_queue(ahead: int) -> None:
    # ahead=1: one batch also waits for a run, in the engine's queue; it fails the same way.
    async def scenario() -> None:
        engine = CountingEngine()
        batcher = Batcher(engine, BatchLimits(1024, 1, 64), pad_id=0, max_queue=64,
                          metrics=Metrics(), parallel=2, ahead=ahead)
        batcher.start()
        jobs = [asyncio.ensure_future(batcher.score([seq(10 + i)], 5)) for i in range(4)]
        await asyncio.to_thread(engine.two_inside.wait, 5)
        await batcher.close()
        for job in jobs:
            with pytest.raises(NotReady):
                await job
        engine.gate.set()  # the engine threads finish; nothing is delivered twice

    asyncio.run(scenario())


def test_parallel_must_be_positive_and_ahead_not_negative() -> None:
    with pytest.raises(ValueError, match="parallel is 0"):
        Batcher(FakeEngine(), BatchLimits(1024, 1, 64), pad_id=0, max_queue=64,
                metrics=Metrics(), parallel=0)
    with pytest.raises(ValueError, match="ahead is -1"):
        Batcher(FakeEngine(), BatchLimits(1024, 1, 64), pad_id=0, max_queue=64,
                metrics=Metrics(), ahead=-1)

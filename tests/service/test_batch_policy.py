"""The batching policy as a table: queue lengths in, chosen queue indices out."""

from __future__ import annotations

import numpy as np
import pytest

from service.batch_policy import (
    BatchLimits,
    drain,
    length_batches,
    next_batch,
    pad,
    padded_cost,
    resolve_limits,
)
from service.providers import CPU, CUDA, PROVIDERS

CASES = [
    # (lengths oldest first, max_batch_tokens, max_batch_size, sort_window, expected indices)
    pytest.param([], 100, 8, 8, [], id="empty queue"),
    pytest.param([5], 100, 8, 8, [0], id="single sequence runs at once"),
    pytest.param([10, 10, 10, 10], 40, 8, 8, [0, 1, 2, 3], id="budget exactly met"),
    pytest.param([10, 10, 10, 10, 10], 40, 8, 8, [0, 1, 2, 3], id="budget closes the batch"),
    pytest.param([3] * 10, 1000, 4, 10, [0, 1, 2, 3], id="batch size closes the batch"),
    pytest.param([500], 100, 8, 8, [0], id="oldest runs alone even over budget"),
    pytest.param([500, 4, 4], 100, 8, 8, [0], id="nothing joins an over-budget head"),
    pytest.param([10, 40, 10, 10], 40, 8, 8, [0, 2, 3], id="padded cost, not real tokens"),
    pytest.param([10, 50, 11, 12, 49], 48, 8, 8, [0, 2, 3], id="similar lengths grouped"),
    pytest.param([50, 10, 49, 12, 48], 150, 8, 8, [0, 2, 4], id="long head takes long ones"),
    pytest.param([10, 10, 10, 10, 10, 10], 1000, 8, 3, [0, 1, 2], id="window bounds reordering"),
    pytest.param([10, 50, 50, 10], 40, 8, 2, [0], id="short outside the window waits"),
    pytest.param([20, 10, 30], 60, 8, 8, [0, 1], id="shorter neighbour pads less"),
    pytest.param([20, 21, 2], 60, 8, 8, [0, 1], id="slightly longer beats much shorter"),
    pytest.param([8, 8, 8], 16, 8, 8, [0, 1], id="ties go to the older sequence"),
]


@pytest.mark.parametrize("lengths, tokens, size, window, expected", CASES)
def test_next_batch(lengths: list[int], tokens: int, size: int, window: int,
                    expected: list[int]) -> None:
    limits = BatchLimits(max_batch_tokens=tokens, max_batch_size=size, sort_window=window)
    picked = next_batch(lengths, limits)
    assert picked == expected
    if len(picked) > 1:
        assert padded_cost([lengths[i] for i in picked]) <= tokens
        assert len(picked) <= size


PADDING_CASES = [
    # (lengths oldest first, max_padding, expected indices); budget and size never bind
    pytest.param([10, 10, 10], 0.0, [0, 1, 2], id="equal lengths need no padding"),
    pytest.param([10, 9, 10], 0.0, [0, 2], id="no padding allowed"),
    pytest.param([10, 9, 8, 40], 0.1, [0, 1, 2], id="outlier waits"),
    pytest.param([40, 10, 38, 39], 0.1, [0, 2, 3], id="long head keeps long company"),
    pytest.param([10, 20], 0.25, [0, 1], id="a quarter padded meets a 0.25 cap"),
    pytest.param([10, 20], 0.2, [0], id="over the cap, head runs alone"),
    pytest.param([10, 20, 40, 5], 1.0, [0, 1, 2, 3], id="no cap"),
]


@pytest.mark.parametrize("lengths, max_padding, expected", PADDING_CASES)
def test_padding_cap(lengths: list[int], max_padding: float, expected: list[int]) -> None:
    limits = BatchLimits(max_batch_tokens=10_000, max_batch_size=64, sort_window=64,
                         max_padding=max_padding)
    picked = next_batch(lengths, limits)
    assert picked == expected
    chosen = [lengths[i] for i in picked]
    if len(picked) > 1:
        assert padded_cost(chosen) - sum(chosen) <= max_padding * padded_cost(chosen)


def test_device_defaults_fill_only_what_is_unset() -> None:
    cpu = resolve_limits(PROVIDERS[CPU], None, 64, 256, None)
    gpu = resolve_limits(PROVIDERS[CUDA], None, 64, 256, None)
    assert cpu.max_batch_tokens < gpu.max_batch_tokens and cpu.max_padding < gpu.max_padding
    pinned = resolve_limits(PROVIDERS[CUDA], 2048, 8, 16, 0.3)
    assert pinned == BatchLimits(2048, 8, 16, 0.3)


def test_every_batch_holds_the_oldest_and_the_queue_drains() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(3, 64, size=300)]
    arrival = list(range(len(lengths)))
    limits = BatchLimits(max_batch_tokens=256, max_batch_size=16, sort_window=32)
    served: list[int] = []
    while arrival:
        picked = next_batch([lengths[a] for a in arrival], limits)
        assert picked[0] == 0, "the oldest sequence is in every batch"
        assert padded_cost([lengths[arrival[i]] for i in picked]) <= 256
        served += [arrival[i] for i in picked]
        arrival = [a for i, a in enumerate(arrival) if i not in set(picked)]
    assert sorted(served) == list(range(len(lengths)))


def _fifo_batches(lengths: list[int], max_tokens: int, max_size: int) -> list[list[int]]:
    """Reference: first come, first served, closing on the same padded budget."""
    batches: list[list[int]] = [[]]
    for length in lengths:
        trial = batches[-1] + [length]
        if batches[-1] and (len(trial) > max_size or padded_cost(trial) > max_tokens):
            batches.append([length])
        else:
            batches[-1] = trial
    return batches


def test_sorting_cuts_padding_against_fifo() -> None:
    rng = np.random.default_rng(1)
    lengths = [int(x) for x in rng.integers(3, 64, size=256)]
    waste = 0
    queue = list(lengths)
    while queue:
        picked = next_batch(queue, BatchLimits(512, 32, 256))
        waste += padded_cost([queue[i] for i in picked]) - sum(queue[i] for i in picked)
        queue = [x for i, x in enumerate(queue) if i not in set(picked)]
    fifo_waste = sum(padded_cost(b) - sum(b) for b in _fifo_batches(lengths, 512, 32))
    assert waste < 0.5 * fifo_waste


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError):
        BatchLimits(max_batch_tokens=0, max_batch_size=1, sort_window=1)
    with pytest.raises(ValueError):
        BatchLimits(max_batch_tokens=1, max_batch_size=1, sort_window=1, max_padding=1.5)


def test_pad_right_pads_with_mask() -> None:
    ids, mask = pad([np.array([2, 5, 3]), np.array([2, 3])], pad_id=0)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.tolist() == [[2, 5, 3], [2, 3, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_drain_is_next_batch_over_a_queue_that_gets_nothing_new() -> None:
    rng = np.random.default_rng(2)
    lengths = [int(x) for x in rng.integers(3, 64, size=300)]
    limits = BatchLimits(max_batch_tokens=256, max_batch_size=16, sort_window=32,
                         max_padding=0.2)
    expected, queue = [], list(range(len(lengths)))
    while queue:
        picked = next_batch([lengths[q] for q in queue], limits)
        expected.append([queue[i] for i in picked])
        queue = [q for i, q in enumerate(queue) if i not in set(picked)]
    assert list(drain(lengths, limits)) == expected
    assert list(drain([], limits)) == []


@pytest.mark.parametrize("lengths, tokens, rows, expected", [
    pytest.param([], 100, 4, [], id="nothing"),
    pytest.param([5, 50, 7, 6, 49, 8, 200], 100, 3, [[0, 3, 2], [5, 4], [1], [6]],
                 id="runs of the length order"),
    pytest.param([4, 4, 4, 4, 4], 100, 2, [[0, 1], [2, 3], [4]], id="rows close a run"),
    pytest.param([9, 3, 9, 3], 18, 8, [[1, 3], [0, 2]], id="ties keep index order"),
    pytest.param([300, 2], 100, 8, [[1], [0]], id="over the budget runs alone"),
])
def test_length_batches(lengths: list[int], tokens: int, rows: int,
                        expected: list[list[int]]) -> None:
    assert list(length_batches(lengths, tokens, rows)) == expected

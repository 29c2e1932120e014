"""The batching policy: which queued sequences run together. Pure functions, no I/O, no clock.

A transformer batch costs about ``n_seqs × max_len`` (every row is padded to the longest), so
the budget is on that padded cost, not on the real token count. Within a bounded window of queued
sequences, length order cuts padding; every batch holds the window's first sequence, its anchor
(service/batcher.py puts there the request to serve next), so nothing waits forever.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from service.providers import Provider


@dataclass(frozen=True)
class BatchLimits:
    max_batch_tokens: int
    """Budget on the padded cost n_seqs × max_len."""
    max_batch_size: int
    """Most sequences in a batch."""
    sort_window: int
    """How many queued sequences (the next requests' first ones) may be reordered."""
    max_padding: float = 1.0
    """Largest share of a batch's padded cost that may be padding; 1 means no limit."""

    def __post_init__(self) -> None:
        if min(self.max_batch_tokens, self.max_batch_size, self.sort_window) < 1:
            raise ValueError(f"batch limits must be positive: {self}")
        if not 0.0 <= self.max_padding <= 1.0:
            raise ValueError(f"max_padding {self.max_padding} is not a fraction")


def resolve_limits(provider: Provider, max_batch_tokens: int | None, max_batch_size: int,
                   sort_window: int, max_padding: float | None) -> BatchLimits:
    """The limits to batch with: the settings, with the provider's defaults
    (service/providers.py, which says why they differ) where they are unset."""
    return BatchLimits(
        max_batch_tokens=provider.max_batch_tokens if max_batch_tokens is None
        else max_batch_tokens,
        max_batch_size=max_batch_size, sort_window=sort_window,
        max_padding=provider.max_padding if max_padding is None else max_padding)


def padded_cost(lengths: Sequence[int]) -> int:
    return len(lengths) * max(lengths, default=0)


def next_batch(lengths: Sequence[int], limits: BatchLimits) -> list[int]:
    """Window indices (ascending) of the sequences to run next; ``lengths[0]`` is the anchor.

    The anchor is always taken, even alone over the budget, so nothing is stuck. The
    batch then grows outwards from it through the window sorted by length, each step taking the
    neighbour that adds the least padding: a shorter one adds ``max_len - its length`` to its own
    row, a longer one adds ``n × (its length - max_len)`` to the rows already in. It stops when
    the batch is full or the better neighbour would break the token budget or the padding cap;
    what is left waits for a batch of its own length, usually the next one.
    """
    if not lengths:
        return []
    window = min(len(lengths), limits.sort_window)
    order = sorted(range(window), key=lambda i: (lengths[i], i))  # stable: older first on ties
    lo = hi = order.index(0)
    top, n, real = lengths[0], 1, lengths[0]

    def fits(rows: int, width: int, tokens: int) -> bool:
        cost = rows * width
        return cost <= limits.max_batch_tokens and cost - tokens <= limits.max_padding * cost

    while n < limits.max_batch_size:
        best: tuple[int, int, str] | None = None  # (added padding, queue index, side)
        if lo > 0 and fits(n + 1, top, real + lengths[order[lo - 1]]):
            cand = order[lo - 1]
            best = (top - lengths[cand], cand, "left")
        if hi + 1 < window:
            cand = order[hi + 1]
            if fits(n + 1, lengths[cand], real + lengths[cand]):
                right = (n * (lengths[cand] - top), cand, "right")
                best = right if best is None or right[:2] < best[:2] else best
        if best is None:
            break
        if best[2] == "left":
            lo -= 1
        else:
            hi += 1
            top = lengths[order[hi]]
        real += lengths[best[1]]
        n += 1
    return sorted(order[lo:hi + 1])


def drain(lengths: Sequence[int], limits: BatchLimits) -> Iterator[list[int]]:
    """Every index of ``lengths`` once, batch by batch (each ascending): what :func:`next_batch`
    takes from a queue that holds them all in this order and gets nothing new meanwhile."""
    queue = deque(range(len(lengths)))
    while queue:
        # next_batch reads only the window, so only the window leaves the queue each time.
        head = [queue.popleft() for _ in range(min(limits.sort_window, len(queue)))]
        picked = next_batch([lengths[i] for i in head], limits)
        yield [head[p] for p in picked]
        taken = set(picked)
        queue.extendleft(reversed([q for k, q in enumerate(head) if k not in taken]))


def length_batches(lengths: Sequence[int], max_tokens: int,
                   max_rows: int) -> Iterator[list[int]]:
    """Indices in runs of the length order (ties by index), each run as long as ``max_rows``
    rows and the padded cost ``rows × longest <= max_tokens`` allow; a sequence longer than the
    budget runs alone.

    This is :func:`drain` over the sorted lengths with no padding cap: the anchor is the shortest
    sequence left, so each batch can only grow towards the longer ones, in order.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)  # stable
    limits = BatchLimits(max_batch_tokens=max_tokens, max_batch_size=max_rows,
                         sort_window=max_rows)
    for batch in drain([lengths[i] for i in order], limits):
        yield [order[p] for p in batch]


def pad(seqs: Sequence[NDArray[np.int64]],
        pad_id: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Right-pad 1-D id arrays into ``(ids, mask)``, both (B, T) int64 as the artifact expects."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)  # (B, T)
    mask = np.zeros((len(seqs), width), dtype=np.int64)  # (B, T)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    return ids, mask

"""ONNX Runtime execution providers as one table: what each one needs from the engine, the
batching policy and the host.

Every place that used to ask "on a GPU?" reads its row instead: which variant ``auto`` loads,
whether outputs are bound on the device (IO binding), the batch defaults, whether several
batches may run at once on one session. A new provider (TensorRT, OpenVINO, ROCm) is one more
row and its place in ``ORDER``; nothing else branches on a provider's name.

The figures behind the defaults are in docs/PERFORMANCE.md: on a CPU a padded position costs as
much as a real one and tokens/s is flat past a few rows, so small batches with little padding
cost nothing and keep latency down, and two single-threaded batches at once beat one batch on
two threads; on a GPU wide batches pay and padding is cheaper than a narrow batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from service.artifact import VariantName

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class Provider:
    name: str
    """ONNX Runtime's name for it."""
    device: Literal["cpu", "gpu"]
    variants: tuple[VariantName, ...]
    """The order ``auto`` prefers an artifact's variants in."""
    bind_output_to: str | None
    """The device IO binding allocates the output on (then copied back once); None: no IO
    binding, ORT's plain ``run``."""
    max_batch_tokens: int
    """Padded cost budget of a batch when ``ELECTRIC_MAX_BATCH_TOKENS`` is unset."""
    max_padding: float
    """Largest share of padding in a batch when ``ELECTRIC_MAX_PADDING`` is unset."""
    parallel_batches: bool
    """Several batches at once on one session pay (each with its share of the cores)."""
    batches_ahead: int
    """Batches formed before a run is free for them (service/batcher.py), so that an engine
    thread that finishes starts the next one without waiting for the event loop."""
    options: dict[str, Any] = field(default_factory=dict)
    """Provider options for the session."""


PROVIDERS: dict[str, Provider] = {
    CPU: Provider(CPU, "cpu", ("int8", "fp32", "fp16"), None, max_batch_tokens=1024,
                  max_padding=0.05, parallel_batches=True, batches_ahead=1),
    # fp16 needs tensor cores to pay off, and int8 (MatMulInteger) has no fast CUDA kernels.
    # kSameAsRequested: batch shapes vary with every request mix; the default power-of-two
    # arena growth would hold on to twice the memory it needs.
    # No batch formed ahead (not measured on a GPU): it would hold fewer of the requests that
    # arrive while one runs, and there wide batches pay.
    CUDA: Provider(CUDA, "gpu", ("fp16", "fp32", "int8"), "cuda", max_batch_tokens=16384,
                   max_padding=0.5, parallel_batches=False, batches_ahead=0,
                   options={"device_id": 0, "arena_extend_strategy": "kSameAsRequested"}),
}
ORDER = (CUDA, CPU)
"""Tried in this order where installed; the CPU, always there, is the last resort."""


def provider_of(name: str | None) -> Provider:
    """The row of the provider running a session: an engine that names another (a test's
    fake, a provider without a row yet) batches as on a CPU."""
    return PROVIDERS.get(name or CPU, PROVIDERS[CPU])

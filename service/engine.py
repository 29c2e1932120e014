"""ONNX Runtime session that turns padded token ids into per-position energies.

CUDA execution provider with IO binding where onnxruntime-gpu and a GPU are present, the CPU
provider otherwise. ``run`` blocks and releases the GIL inside ORT. On a CPU the batcher calls it
from ``parallel_runs`` worker threads at once (ORT's ``Run`` is thread-safe), each run with its
share of the cores; on a GPU from one thread.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from service.artifact import (
    INPUT_NAMES,
    OUTPUT_NAME,
    ArtifactError,
    Manifest,
    VariantName,
    verified_variant_path,
)
from service.providers import CPU, ORDER, PROVIDERS, Provider, provider_of
from service.settings import VariantChoice

logger = logging.getLogger("electric.service")

# What a session that cannot start on a device raises (missing libraries, no device, no memory).
_ORT_ERRORS = (ort_state.Fail, ort_state.EPFail, ort_state.RuntimeException, RuntimeError)


class EnergyEngine(Protocol):
    """What the batcher needs from a model: the service runs ORT, tests run fakes."""

    @property
    def variant(self) -> str: ...

    @property
    def providers(self) -> list[str]: ...

    def run(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> NDArray[np.float32]:
        """(B, T) right-padded ids and 1/0 mask -> (B, T) energies; padding rows are garbage."""
        ...


def choose_variant(requested: VariantChoice, available: Collection[str],
                   provider: Provider) -> VariantName:
    """The variant to load: the one asked for, or for ``auto`` the best ``provider`` runs."""
    if requested != "auto":
        if requested not in available:
            raise ArtifactError(
                f"variant {requested!r} is not in the artifact; it has {sorted(available)}")
        return requested
    for name in provider.variants:
        if name in available:
            return name
    raise ArtifactError("the artifact lists no variants")


def cpu_budget(cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs this process may use when something limits it below the machine's core count:
    a cgroup CPU quota (a container's CPU limit) or an affinity mask; None when nothing does.

    ONNX Runtime sizes its pool from the cores it sees; in a container limited to 2 CPUs on a
    64-core node it would start 64 threads and spend the quota on contention.
    """
    limits = []
    if hasattr(os, "sched_getaffinity"):
        limits.append(len(os.sched_getaffinity(0)))
    quota = period = None
    try:  # cgroup v2: "max 100000" or "200000 100000"
        fields = (cgroup / "cpu.max").read_text().split()
        if fields[0] != "max":
            quota, period = int(fields[0]), int(fields[1])
    except (OSError, ValueError, IndexError):
        try:  # cgroup v1: -1 means no quota
            quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            pass
    if quota is not None and period and quota > 0:
        limits.append(max(1, math.ceil(quota / period)))
    budget = min(limits, default=None)
    return budget if budget is not None and budget < (os.cpu_count() or budget + 1) else None


# Most batches run at once on a CPU when the settings leave it open. Measured on 2 cores only
# (docs/PERFORMANCE.md); on more, a few runs of several threads each keep a lone request's
# latency near one run's on all cores.
MAX_AUTO_RUNS = 4


def cpu_runs(parallel_batches: int, intra_op_threads: int) -> tuple[int, int]:
    """(batches at once, intra-op threads each) on a CPU, from the settings (0: choose).

    Cores are :func:`cpu_budget`'s, else the machine's. Both open: one run per core up to
    MAX_AUTO_RUNS, the cores shared out among them. One given: the other fills the cores."""
    cores = cpu_budget() or os.cpu_count() or 1
    runs, threads = parallel_batches, intra_op_threads
    if not runs:
        runs = max(1, cores // threads) if threads else min(MAX_AUTO_RUNS, cores)
    if not threads:
        threads = max(1, cores // runs)
    return runs, threads


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """Session options for one batch at a time; ``intra_op_threads`` 0 means the CPU budget
    (cpu_budget) where one is set, else ORT's default of one thread per physical core."""
    if intra_op_threads == 0:
        intra_op_threads = cpu_budget() or 0
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads
    # One batch at a time: parallelism lives inside operators, not between them.
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # ORT's pool threads spin after each run waiting for the next; in a service that burns
    # the cores the event loop, the tokenizer and the clients need between batches.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxEngine:
    def __init__(self, session: ort.InferenceSession, variant: str, parallel_runs: int = 1):
        self._session = session
        self._variant = variant
        self.provider = provider_of(session.get_providers()[0])
        """The table row of the provider that runs it (service/providers.py)."""
        self.parallel_runs = parallel_runs if self.provider.parallel_batches else 1
        """How many batches the caller may run at once (batcher worker threads)."""
        self.intra_op_threads = session.get_session_options().intra_op_num_threads
        """ORT threads per run; 0 is ORT's default (one per physical core)."""
        names = [i.name for i in session.get_inputs()]
        if sorted(names) != sorted(INPUT_NAMES) or OUTPUT_NAME not in [
                o.name for o in session.get_outputs()]:
            raise ArtifactError(
                f"the {variant} model takes {names}; the artifact contract is {list(INPUT_NAMES)}"
                f" -> {OUTPUT_NAME}")

    @classmethod
    def load(cls, folder: Path, manifest: Manifest, requested: VariantChoice,
             intra_op_threads: int = 0, parallel_batches: int = 1) -> OnnxEngine:
        """Pick a variant and provider, verify the file's sha256, build the session.

        ``parallel_batches`` is how many batches the caller will run at once on a CPU (0:
        :func:`cpu_runs` chooses); ``intra_op_threads`` 0 then shares the cores among them.
        One caller thread (the CLI's scorer) keeps the default of 1 run on all cores."""
        runs, threads = 1, intra_op_threads
        if parallel_batches != 1:
            runs, threads = cpu_runs(parallel_batches, intra_op_threads)
        opts = session_options(threads)
        installed = set(ort.get_available_providers())
        for name in ORDER:
            if name == CPU or name not in installed:
                continue
            provider = PROVIDERS[name]
            variant = choose_variant(requested, manifest.variants, provider)
            path = verified_variant_path(folder, manifest, variant)
            try:
                session = ort.InferenceSession(str(path), opts,
                                               providers=[(name, provider.options), CPU])
            except _ORT_ERRORS as exc:
                logger.warning("%s session failed (%s); trying the next provider", name, exc)
                continue
            if session.get_providers()[0] == name:
                return cls(session, variant, runs)
            # e.g. onnxruntime-gpu installed on a machine without a usable GPU.
            logger.warning("%s is installed but unusable; trying the next provider", name)
        variant = choose_variant(requested, manifest.variants, PROVIDERS[CPU])
        path = verified_variant_path(folder, manifest, variant)
        return cls(ort.InferenceSession(str(path), opts, providers=[CPU]), variant, runs)

    @property
    def variant(self) -> str:
        return self._variant

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def run(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> NDArray[np.float32]:
        if self.provider.bind_output_to is not None:
            return self._run_bound(ids, mask, self.provider.bind_output_to)
        (energies,) = self._session.run([OUTPUT_NAME], {"input_ids": ids, "attention_mask": mask})
        return np.asarray(energies, dtype=np.float32)  # (B, T)

    def _run_bound(self, ids: NDArray[np.int64], mask: NDArray[np.int64],
                   device: str) -> NDArray[np.float32]:
        # IO binding: inputs go to the device once, the output is allocated there and copied
        # back once, instead of ORT staging both through its own CPU buffers.
        binding = self._session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_output(OUTPUT_NAME, device, 0)
        self._session.run_with_iobinding(binding)
        (energies,) = binding.copy_outputs_to_cpu()
        return np.asarray(energies, dtype=np.float32)  # (B, T)


def warm_up(engine: EnergyEngine, pad_id: int, max_length: int, max_batch_tokens: int) -> None:
    """Run the shapes real traffic will bring, so the first request does not pay for
    allocator growth and kernel selection (most visible on CUDA)."""
    for length in sorted({min(16, max_length), min(64, max_length), max_length}):
        rows = max(1, min(64, max_batch_tokens // length))
        for batch in sorted({1, rows}):
            ids = np.full((batch, length), pad_id, dtype=np.int64)
            engine.run(ids, np.ones_like(ids))

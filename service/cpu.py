"""What the CPU offers ONNX Runtime's int8 and float kernels: recorded beside every figure.

int8 answers do not depend on these (calibration.WEIGHT_MAX keeps every CPU exact), but speed
does, and a figure without the machine it came from cannot be compared with another.
"""

from __future__ import annotations

import platform
from pathlib import Path

# The instruction-set flags (as /proc/cpuinfo names them) that pick MLAS's GEMM kernels: x86
# AVX2 / AVX-512 / VNNI / AMX, and ARM64's dot-product and int8 matrix extensions.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile",
                "amx_int8", "amx_bf16", "asimddp", "i8mm", "sve")


def cpu_model(cpuinfo: str | None = None) -> str:
    for line in _cpuinfo(cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str | None = None) -> list[str]:
    """The :data:`KERNEL_FLAGS` this CPU has, in that order (empty where /proc/cpuinfo is not
    readable, e.g. macOS)."""
    present: set[str] = set()
    for line in _cpuinfo(cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM64
            present.update(value.split())
    return [flag for flag in KERNEL_FLAGS if flag in present]


def describe_cpu() -> dict[str, object]:
    """``{"cpu": model, "machine": arch, "cpu_flags": [...]}`` for a results file or manifest."""
    return {"cpu": cpu_model(), "machine": platform.machine(), "cpu_flags": cpu_flags()}


def _cpuinfo(text: str | None) -> str:
    if text is not None:
        return text
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""

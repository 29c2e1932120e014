"""GPU engine speed: fp16 fused graph on the CUDA execution provider, three ways to feed it.

- ``run``: ``session.run`` with numpy inputs and outputs (a host round trip per call);
- ``iobinding``: inputs and output pre-allocated on the device once and bound, so a call moves
  no data across PCIe;
- ``cudagraph``: the same bindings with ``enable_cuda_graph``: the first call captures the
  kernel launches, later calls replay them (one graph per shape, so one per length bucket).

Model FLOP utilisation = model FLOP/s (bench.machine.encoder_flops_per_token) over the dense
fp16 tensor-core peak of the GPU named by nvidia-smi. Models are random (speed does not depend
on weights): ``prepare`` exports them where torch is installed, ``run`` needs only
onnxruntime-gpu, so the two halves can run on different machines.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from bench.engine import token_grid
from bench.machine import encoder_flops_per_token
from bench.timing import best_seconds

# Dense (no sparsity) fp16/bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s.
DENSE_FP16_PEAK = {"H200": 989.4e12, "H100 SXM": 989.4e12, "H100 80GB HBM3": 989.4e12,
                   "H100 NVL": 835.5e12, "H100 PCIe": 756.5e12, "A100": 312e12, "L40S": 362.1e12,
                   "L4": 121e12, "A10": 125e12, "T4": 65e12}
PRESETS = ("minilm", "base")


def gpu_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def peak_for(name: str) -> float | None:
    # Longest key first: "H100 PCIe" must not match the plain "H100 SXM" entry by accident.
    for key in sorted(DENSE_FP16_PEAK, key=len, reverse=True):
        if all(part in name for part in key.split()):
            return DENSE_FP16_PEAK[key]
    return None


def prepare(folder: Path, presets: tuple[str, ...] = PRESETS) -> None:
    """Export a random fp16 fused graph per preset into ``folder`` (needs torch)."""
    import tempfile

    import torch

    from model_export.config import MODEL_PRESETS
    from model_export.export import export_onnx
    from model_export.model import Electric
    from model_export.optimize import fuse

    folder.mkdir(parents=True, exist_ok=True)
    for preset in presets:
        cfg = MODEL_PRESETS[preset]
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            raw = export_onnx(Electric(cfg).eval(), Path(tmp) / "raw.onnx")
            fuse(raw, Path(tmp) / "fused.onnx", cfg, fp16=folder / f"{preset}.fp16.onnx")
        (folder / f"{preset}.json").write_text(json.dumps(
            {"layers": cfg.layers, "hidden": cfg.hidden, "intermediate": cfg.intermediate,
             "vocab": cfg.vocab_size}))


def _session(path: Path, cuda_graph: bool, allow_cpu: bool) -> Any:
    import onnxruntime as ort

    from service.engine import session_options

    options = {"device_id": 0, "enable_cuda_graph": "1" if cuda_graph else "0"}
    providers: list[Any] = [("CUDAExecutionProvider", options)]
    if allow_cpu:
        providers.append("CPUExecutionProvider")
    session = ort.InferenceSession(str(path), session_options(0), providers=providers)
    if session.get_providers()[0] != "CUDAExecutionProvider" and not allow_cpu:
        raise RuntimeError(f"CUDA execution provider did not start: {session.get_providers()}")
    return session


def _timers(path: Path, ids: np.ndarray, mask: np.ndarray, allow_cpu: bool) -> dict[str, Any]:
    """{mode: zero-argument callable} for one (batch, length) shape."""
    import onnxruntime as ort

    device = "cuda" if not allow_cpu else "cpu"
    plain = _session(path, cuda_graph=False, allow_cpu=allow_cpu)
    feeds = {"input_ids": ids, "attention_mask": mask}
    timers: dict[str, Any] = {"run": lambda: plain.run(None, feeds)}

    def bound(session: Any) -> Any:
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
        out = ort.OrtValue.ortvalue_from_shape_and_type(list(ids.shape), np.float32, device, 0)
        binding.bind_ortvalue_output("energies", out)

        def call() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return call

    timers["iobinding"] = bound(plain)
    if not allow_cpu:  # CUDA graphs exist only on the CUDA provider
        timers["cudagraph"] = bound(_session(path, cuda_graph=True, allow_cpu=False))
    return timers


def run(folder: Path, batches: tuple[int, ...] = (32, 128, 256), length: int = 128,
        presets: tuple[str, ...] = PRESETS, allow_cpu: bool = False) -> dict[str, Any]:
    """``allow_cpu`` runs the same code on the CPU provider: a dry run of the logic only."""
    name = gpu_name()
    peak = peak_for(name)
    cells = []
    for preset in presets:
        arch = json.loads((folder / f"{preset}.json").read_text())
        flops_per_token = encoder_flops_per_token(arch["layers"], arch["hidden"],
                                                  arch["intermediate"], length)
        for batch in batches:
            ids, mask = token_grid(batch, length, arch["vocab"])
            for mode, call in _timers(folder / f"{preset}.fp16.onnx", ids, mask,
                                      allow_cpu).items():
                seconds = best_seconds(call, min_time=1.0, min_runs=5, max_runs=500)
                flops = flops_per_token * batch * length / seconds
                cells.append({"preset": preset, "batch": batch, "length": length, "mode": mode,
                              "ms": 1000 * seconds, "tokens_per_s": batch * length / seconds,
                              "tflops_per_s": flops / 1e12,
                              "mfu": flops / peak if peak else None})
    return {"bench": "gpu", "gpu": name, "dense_fp16_peak_tflops": peak and peak / 1e12,
            "cells": cells}


def report(result: dict[str, Any]) -> str:
    peak = result["dense_fp16_peak_tflops"]
    lines = [(f"GPU: {result['gpu']}, dense fp16 peak "
             f"{f'{peak:.0f} TFLOP/s' if peak else 'unknown'}; fp16 fused graphs."), "",
             "| model | batch x length | mode | ms | tokens/s | TFLOP/s | MFU |",
             "|---|---|---|---|---|---|---|"]
    for c in result["cells"]:
        mfu = f"{100 * c['mfu']:.1f}%" if c["mfu"] is not None else "n/a"
        lines.append(f"| {c['preset']} | {c['batch']} x {c['length']} | {c['mode']} | "
                     f"{c['ms']:.2f} | {c['tokens_per_s']:,.0f} | {c['tflops_per_s']:.1f} "
                     f"| {mfu} |")
    return "\n".join(lines)

"""Engine speed: PyTorch eager fp32 vs ONNX Runtime raw fp32 / fused fp32 / int8, same model.

One randomly initialised model of a preset's shape (speed does not depend on the weights) is
exported once; every runtime then scores the same (batch, length) grids of token ids, full
attention masks, so tokens/s and model GFLOP/s compare like for like. ORT sessions use the
service's own session options; the raw graph runs at ORT's basic optimisation level, so the
row shows what the transformer optimizer's fusion adds.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.machine import describe, encoder_flops_per_token, ort_matmul_peak
from bench.timing import best_seconds

Runner = Callable[[NDArray[np.int64], NDArray[np.int64]], object]
RUNTIMES = ("pytorch-fp32", "ort-fp32-raw", "ort-fp32-fused", "ort-int8", "ort-int8-rowwise")
"""``ort-int8`` is the dynamic scheme (one activation scale per batch), ``ort-int8-rowwise``
the calibrated per-token scheme the embedded model ships (model_export/optimize.py)."""


def _ort_runner(path: Path, threads: int, basic: bool = False) -> Runner:
    import onnxruntime as ort

    from service.engine import session_options

    opts = session_options(threads)
    if basic:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})


def _torch_runner(energy: Any, threads: int) -> Runner:
    import torch

    torch.set_num_threads(threads)

    def run(ids: NDArray[np.int64], mask: NDArray[np.int64]) -> object:
        with torch.inference_mode():
            return energy(torch.from_numpy(ids), torch.from_numpy(mask))

    return run


def build_runners(preset: str, workdir: Path, threads: int,
                  runtimes: tuple[str, ...] = RUNTIMES) -> tuple[dict[str, Runner], Any]:
    """Export a random model of ``preset`` and return {runtime: runner} plus its config."""
    import torch

    from model_export.config import MODEL_PRESETS
    from model_export.export import export_onnx
    from model_export.model import Electric
    from model_export.optimize import fuse, quantize_int8

    cfg = MODEL_PRESETS[preset]
    torch.manual_seed(0)
    model = Electric(cfg).eval()
    raw = export_onnx(model, workdir / "raw.onnx")
    logging.getLogger("model_export").setLevel(logging.ERROR)
    runners: dict[str, Runner] = {}
    if "pytorch-fp32" in runtimes:
        runners["pytorch-fp32"] = _torch_runner(model.energy, threads)
    if "ort-fp32-raw" in runtimes:
        runners["ort-fp32-raw"] = _ort_runner(raw, threads, basic=True)
    if {"ort-fp32-fused", "ort-int8", "ort-int8-rowwise"} & set(runtimes):
        fuse(raw, workdir / "fused.onnx", cfg)
        if "ort-fp32-fused" in runtimes:
            runners["ort-fp32-fused"] = _ort_runner(workdir / "fused.onnx", threads)
        if "ort-int8" in runtimes:
            quantize_int8(workdir / "fused.onnx", workdir / "int8.onnx")
            runners["ort-int8"] = _ort_runner(workdir / "int8.onnx", threads)
        if "ort-int8-rowwise" in runtimes:
            # Random rows calibrate as well as text for a speed measurement: the graph (and so
            # the cost) does not depend on what calibration picks, only a few choices in it.
            batches = [token_grid(16, 24, cfg.vocab_size, seed=s) for s in range(4)]
            quantize_int8(workdir / "fused.onnx", workdir / "int8-rowwise.onnx",
                          scheme="rowwise", calibration=batches)
            runners["ort-int8-rowwise"] = _ort_runner(workdir / "int8-rowwise.onnx", threads)
    return runners, cfg


def token_grid(batch: int, length: int, vocab: int,
               seed: int = 0) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """[CLS] w ... w [SEP] rows of random word ids (ids 5.. skip the specials)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, length), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 2, 3
    return ids, np.ones_like(ids)


def run(preset: str = "minilm", batches: tuple[int, ...] = (1, 8, 32, 64),
        lengths: tuple[int, ...] = (16, 32, 64, 128), threads: int = 0,
        runtimes: tuple[str, ...] = RUNTIMES, min_time: float = 0.5) -> dict[str, Any]:
    import os

    threads = threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="electric-bench-") as tmp:
        runners, cfg = build_runners(preset, Path(tmp), threads, runtimes)
        peak = ort_matmul_peak(threads)
        peak_int8 = ort_matmul_peak(threads, int8=True)
        cells = []
        for length in lengths:
            for batch in batches:
                ids, mask = token_grid(batch, length, cfg.vocab_size)
                flops = encoder_flops_per_token(cfg.layers, cfg.hidden, cfg.intermediate,
                                                length) * batch * length
                for name, runner in runners.items():
                    seconds = best_seconds(partial(runner, ids, mask), min_time=min_time,
                                           min_runs=2)
                    cells.append({"runtime": name, "batch": batch, "length": length,
                                  "ms": 1000 * seconds, "tokens_per_s": batch * length / seconds,
                                  "gflops_per_s": flops / seconds / 1e9})
    return {"bench": "engine", "preset": preset, "threads": threads, "machine": describe(),
            "architecture": {"layers": cfg.layers, "hidden": cfg.hidden,
                             "intermediate": cfg.intermediate, "vocab": cfg.vocab_size},
            "matmul_peak_gflops": peak, "matmul_peak_int8_gops": peak_int8, "cells": cells}


def report(result: dict[str, Any]) -> str:
    """Markdown: tokens/s per cell, speed-up over PyTorch and share of the matmul peak."""
    cells = result["cells"]
    names = [r for r in RUNTIMES if any(c["runtime"] == r for c in cells)]
    lines = [(f"Engine, preset `{result['preset']}` ({result['architecture']['layers']} layers, "
             f"hidden {result['architecture']['hidden']}), {result['threads']} threads, "
             f"{result['machine']['cpu']}. ORT MatMul peak {result['matmul_peak_gflops']:.0f} "
             f"GFLOP/s fp32, {result['matmul_peak_int8_gops']:.0f} GOP/s int8."), "",
             "| batch x length | " + " | ".join(f"{n} tok/s" for n in names)
             + " | best vs PyTorch | fused fp32 % of fp32 peak | int8 % of int8 peak |",
             "|---|" + "---|" * (len(names) + 3)]
    by_key: dict[tuple[int, int], dict[str, dict[str, float]]] = {}
    for c in cells:
        by_key.setdefault((c["batch"], c["length"]), {})[c["runtime"]] = c
    for (batch, length), row in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        speeds = [f"{row[n]['tokens_per_s']:,.0f}" if n in row else "" for n in names]
        best = max(v["tokens_per_s"] for v in row.values())
        base = row.get("pytorch-fp32")
        ratio = f"{best / base['tokens_per_s']:.1f}x" if base else ""
        fused = row.get("ort-fp32-fused")
        share = (f"{100 * fused['gflops_per_s'] / result['matmul_peak_gflops']:.0f}%"
                 if fused else "")
        int8 = row.get("ort-int8")
        share8 = (f"{100 * int8['gflops_per_s'] / result['matmul_peak_int8_gops']:.0f}%"
                  if int8 else "")
        lines.append(f"| {batch} x {length} | " + " | ".join(speeds)
                     + f" | {ratio} | {share} | {share8} |")
    return "\n".join(lines)

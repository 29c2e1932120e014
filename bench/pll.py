"""One-pass Electric scoring vs masked-LM pseudo-log-likelihood on the same backbone and runtime.

PLL (Salazar et al. 2020, "Masked Language Model Scoring") scores a sentence of n tokens with
n forward passes, one per masked position. Here it is batched the cheapest way we know: every
masked copy of every sentence is one row, rows are packed into large batches, and the vocabulary
projection runs only at the masked position of each row (a gather before the output layer, not
a (B, T, V) logit tensor). Electric needs one row per sentence. Both graphs share the encoder
shape, are fused by the same ONNX Runtime optimizer and run with the service's session options;
the weights are random (speed does not depend on them).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.engine import Runner, _ort_runner, token_grid
from bench.machine import describe
from bench.timing import best_seconds


def _masked_lm(energy_model: Any) -> Any:
    """A BERT-style MLM head on ``energy_model``'s encoder: log p(target | row with one mask)."""
    import torch
    from torch import nn

    class MaskedLMScorer(nn.Module):
        def __init__(self, backbone: Any):
            super().__init__()
            self.backbone = backbone
            hidden = backbone.cfg.hidden
            self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(),
                                           nn.LayerNorm(hidden))
            self.decoder_bias = nn.Parameter(torch.zeros(backbone.cfg.vocab_size))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            h = self.backbone.hidden_states(input_ids, attention_mask)  # (B, T, C)
            rows = torch.arange(h.shape[0])
            at_mask = self.transform(h[rows, positions])  # (B, C)
            words = self.backbone.embeddings.word_embeddings.weight  # (V, C), tied as in BERT
            logits = at_mask @ words.t() + self.decoder_bias  # (B, V)
            return torch.log_softmax(logits, dim=-1)[rows, targets]  # (B,)

    if energy_model.cfg.embedding_size != energy_model.cfg.hidden:
        raise ValueError("the PLL benchmark ties the decoder to the embeddings: needs E == H")
    return MaskedLMScorer(energy_model).eval()


def _export_mlm(model: Any, path: Path) -> Path:
    import torch

    ids = torch.full((2, 8), 5, dtype=torch.long)
    args = (ids, torch.ones_like(ids), torch.tensor([1, 2]), torch.tensor([5, 6]))
    names = ["input_ids", "attention_mask", "positions", "targets"]
    axes: dict[str, dict[int, str]] = {"input_ids": {0: "batch", 1: "sequence"},
                                       "attention_mask": {0: "batch", 1: "sequence"},
                                       "positions": {0: "batch"}, "targets": {0: "batch"},
                                       "log_prob": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), input_names=names, output_names=["log_prob"],
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True,
                          dynamo=False)
    return path


def _mlm_runner(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    from service.engine import session_options

    session = ort.InferenceSession(str(path), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def masked_copies(ids: np.ndarray, mask_id: int = 4) -> dict[str, np.ndarray]:
    """Every sentence row of ``ids`` ([CLS] w.. [SEP]) -> one row per word with that word masked."""
    batch, length = ids.shape
    positions = np.tile(np.arange(1, length - 1), batch)  # (B * n,)
    rows = np.repeat(ids, length - 2, axis=0)  # (B * n, T)
    targets = rows[np.arange(len(rows)), positions].copy()
    rows[np.arange(len(rows)), positions] = mask_id
    return {"input_ids": rows, "attention_mask": np.ones_like(rows),
            "positions": positions.astype(np.int64), "targets": targets}


def run(preset: str = "minilm", words: int = 20, threads: int = 0,
        electric_batches: tuple[int, ...] = (8, 32, 64),
        pll_rows: tuple[int, ...] = (40, 80, 160), min_time: float = 1.0) -> dict[str, Any]:
    import torch

    from model_export.config import MODEL_PRESETS
    from model_export.export import export_onnx
    from model_export.model import Electric
    from model_export.optimize import fuse, quantize_int8

    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    cfg = MODEL_PRESETS[preset]
    torch.manual_seed(0)
    model = Electric(cfg).eval()
    length = words + 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="electric-pll-") as tmp:
        work = Path(tmp)
        fused_ops = {
            "electric": fuse(export_onnx(model, work / "energy.raw.onnx"),
                             work / "energy.fp32.onnx", cfg),
            "pll": fuse(_export_mlm(_masked_lm(model.energy), work / "mlm.raw.onnx"),
                        work / "mlm.fp32.onnx", cfg)}
        for precision in ("fp32", "int8"):
            if precision == "int8":
                quantize_int8(work / "energy.fp32.onnx", work / "energy.int8.onnx")
                quantize_int8(work / "mlm.fp32.onnx", work / "mlm.int8.onnx")
            electric: Runner = _ort_runner(work / f"energy.{precision}.onnx", threads)
            mlm = _mlm_runner(work / f"mlm.{precision}.onnx", threads)
            for batch in electric_batches:
                ids, mask = token_grid(batch, length, cfg.vocab_size)
                seconds = best_seconds(partial(electric, ids, mask), min_time=min_time)
                rows.append({"method": "electric", "precision": precision, "rows": batch,
                             "tokens_per_s": batch * words / seconds,
                             "sentences_per_s": batch / seconds})
            for n_rows in pll_rows:
                sentences = max(1, n_rows // words)
                ids, _ = token_grid(sentences, length, cfg.vocab_size)
                feeds = masked_copies(ids)
                seconds = best_seconds(partial(mlm, feeds), min_time=min_time)
                rows.append({"method": "pll", "precision": precision, "rows": len(feeds["targets"]),
                             "tokens_per_s": sentences * words / seconds,
                             "sentences_per_s": sentences / seconds})
    speedups = {}
    for precision in ("fp32", "int8"):
        best = {m: max(r["tokens_per_s"] for r in rows
                       if r["method"] == m and r["precision"] == precision)
                for m in ("electric", "pll")}
        speedups[precision] = best["electric"] / best["pll"]
    return {"bench": "pll", "preset": preset, "words": words, "threads": threads,
            "machine": describe(), "fused_ops": fused_ops, "rows": rows, "speedup": speedups}


def report(result: dict[str, Any]) -> str:
    lines = [(f"One-pass Electric vs masked-LM PLL, preset `{result['preset']}`, "
             f"{result['words']}-token sentences, {result['threads']} threads, ONNX Runtime "
             f"fused graphs (fused ops: Electric {result['fused_ops']['electric']}, "
             f"PLL {result['fused_ops']['pll']})."), "",
             "| method | precision | rows per run | scored tokens/s | sentences/s |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['precision']} | {r['rows']} | "
                     f"{r['tokens_per_s']:,.0f} | {r['sentences_per_s']:,.1f} |")
    lines.append("")
    for precision, ratio in result["speedup"].items():
        lines.append(f"Speed-up, best batch each, {precision}: **{ratio:.1f}x** (target >= 15x)")
    return "\n".join(lines)

"""Parity verification: does each ONNX variant of an artifact compute what the model computes?

The reference is the PyTorch model when a checkpoint is given, otherwise the artifact's own fp32
variant. Sentences go through the artifact's tokenizer as one right-padded batch, as the
service sends them. Checks, per variant:

- fp32: energies at real positions within ``FP32_ATOL`` of PyTorch, and each sentence run
  alone equal to the same sentence in the padded batch (a wrong attention-mask format in the
  fused graph shows up here first).
- int8: quantisation moves energies, so the test is on what re-ranking uses: Pearson
  correlation of sentence scores (``-Σ E`` over non-special tokens) with the reference.
- fp16: only where the CUDA execution provider really runs it (``session.get_providers()``);
  elsewhere it is skipped with the reason, never silently passed.

Every variant file's sha256 is checked against the manifest before it is run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from model_export.config import ModelConfig
from model_export.model import Electric
from service.artifact import (
    INPUT_NAMES,
    ArtifactError,
    Manifest,
    VariantName,
    load_manifest,
    verified_variant_path,
)

FP32_ATOL = 1e-4
INT8_MIN_PEARSON = 0.99
# fp16 keeps ~3 significant digits; energies are sums over hundreds of products.
FP16_MIN_PEARSON = 0.999
FP16_RTOL = 2e-2

Status = Literal["pass", "fail", "skip"]


@dataclass
class VariantCheck:
    variant: str
    status: Status
    reference: str
    """``pytorch`` or ``fp32``: what the variant was compared with."""
    provider: str = ""
    max_abs_diff: float | None = None
    """Largest energy difference at real (unpadded) positions."""
    pearson: float | None = None
    """Correlation of sentence scores with the reference."""
    padding_diff: float | None = None
    """Largest difference between a sentence alone and the same sentence in the padded batch."""
    message: str = ""


@dataclass
class VerifyReport:
    folder: Path
    sentences: int
    checks: list[VariantCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No variant failed and at least one was really checked."""
        return (all(c.status != "fail" for c in self.checks)
                and any(c.status == "pass" for c in self.checks))

    def table(self) -> str:
        def num(x: float | None, fmt: str) -> str:
            return "-" if x is None else format(x, fmt)

        rows = [("variant", "status", "vs", "provider", "max|dE|", "pearson", "pad|dE|", "note")]
        rows += [(c.variant, c.status.upper(), c.reference, c.provider.replace("ExecutionProvider", ""),
                  num(c.max_abs_diff, ".2e"), num(c.pearson, ".6f"), num(c.padding_diff, ".2e"),
                  c.message) for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1]
                 for r in rows]
        verdict = "PASSED" if self.passed else "FAILED"
        return "\n".join([f"{self.folder} ({self.sentences} sentences)", *lines, verdict])


@dataclass
class _Batch:
    ids: np.ndarray  # (B, T) int64
    mask: np.ndarray  # (B, T) int64, 1 = real token
    scored: np.ndarray  # (B, T) bool, real and not special


def _encode(folder: Path, manifest: Manifest, sentences: list[str]) -> _Batch:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / manifest.tokenizer.file))
    tok.enable_truncation(manifest.architecture.max_positions)
    encodings = tok.encode_batch(sentences)
    T = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), T), manifest.tokenizer.pad_id, dtype=np.int64)
    mask = np.zeros_like(ids)
    scored = np.zeros(ids.shape, dtype=bool)
    for i, e in enumerate(encodings):
        n = len(e.ids)
        ids[i, :n] = e.ids
        mask[i, :n] = 1
        scored[i, :n] = np.array(e.special_tokens_mask) == 0
    return _Batch(ids, mask, scored)


def _scores(energies: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """(B, T) energies -> (B,) sentence scores, -Σ E over scored tokens (float64)."""
    return -(energies.astype(np.float64) * scored).sum(axis=1)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _session(path: Path, providers: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the CUDA EP warns about every node it leaves on the CPU
    return ort.InferenceSession(str(path), options, providers=providers)


def _run(session, batch: _Batch) -> np.ndarray:
    feeds = dict(zip(INPUT_NAMES, (batch.ids, batch.mask)))
    return session.run(None, feeds)[0]  # (B, T) float32


def _padding_diff(session, batch: _Batch, batched: np.ndarray) -> float:
    """Largest |E(sentence alone) - E(sentence in the padded batch)| over real positions."""
    worst = 0.0
    for i in range(len(batch.ids)):
        n = int(batch.mask[i].sum())
        alone = _Batch(batch.ids[i:i + 1, :n], batch.mask[i:i + 1, :n], batch.scored[i:i + 1, :n])
        worst = max(worst, float(np.abs(_run(session, alone)[0] - batched[i, :n]).max()))
    return worst


def _torch_energies(model: Electric, batch: _Batch) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return model.energy(torch.from_numpy(batch.ids), torch.from_numpy(batch.mask)).numpy()


def _check_architecture(manifest: Manifest, cfg: ModelConfig) -> None:
    a = manifest.architecture
    ours = (cfg.layers, cfg.hidden, cfg.heads, cfg.vocab_size)
    theirs = (a.layers, a.hidden, a.heads, a.vocab_size)
    if ours != theirs:
        raise ArtifactError(f"the checkpoint has (layers, hidden, heads, vocab) {ours}, "
                            f"the artifact {theirs}: not the model it was exported from")


def verify_artifact(folder: Path, model: Electric | None, sentences: list[str]) -> VerifyReport:
    """Run every variant of ``folder`` on ``sentences`` and compare it with the reference."""
    import onnxruntime as ort

    if len(sentences) < 3:
        raise ValueError(f"{len(sentences)} sentences: a score correlation needs at least 3")
    manifest = load_manifest(folder)
    if model is not None:
        _check_architecture(manifest, model.cfg)
    batch = _encode(folder, manifest, sentences)
    real = batch.mask == 1
    report = VerifyReport(folder, len(sentences))

    # fp32 first: without a checkpoint it is the reference for the others.
    order: list[VariantName] = [v for v in ("fp32", "int8", "fp16") if v in manifest.variants]
    ref_name, ref = ("pytorch", _torch_energies(model, batch)) if model is not None else ("", None)
    for variant in order:
        try:
            path = verified_variant_path(folder, manifest, variant)
        except ArtifactError as exc:
            report.checks.append(VariantCheck(variant, "fail", ref_name or "-", message=str(exc)))
            continue
        if variant == "fp16":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                report.checks.append(VariantCheck(
                    variant, "skip", ref_name or "-", message="sha256 ok; not run: this "
                    "onnxruntime build has no CUDAExecutionProvider (fp16 kernels are CUDA only)"))
                continue
            session = _session(path, ["CUDAExecutionProvider", "CPUExecutionProvider"])
            if session.get_providers()[0] != "CUDAExecutionProvider":
                report.checks.append(VariantCheck(
                    variant, "skip", ref_name or "-", message="sha256 ok; not run: the CUDA "
                    "execution provider did not start (no GPU visible?)"))
                continue
        else:
            session = _session(path, ["CPUExecutionProvider"])
        provider = session.get_providers()[0]
        out = _run(session, batch)
        if not np.isfinite(out[real]).all():
            report.checks.append(VariantCheck(variant, "fail", ref_name or "-", provider,
                                              message="non-finite energies"))
            continue
        if ref is None:  # no checkpoint: fp32 becomes the reference
            ref_name, ref = "fp32", out
        diff = float(np.abs(out - ref)[real].max())
        pearson = _pearson(_scores(out, batch.scored), _scores(ref, batch.scored))
        check = VariantCheck(variant, "pass", ref_name, provider, diff, pearson)
        if variant == "fp32":
            check.padding_diff = _padding_diff(session, batch, out)
            problems = [f"max|dE| {diff:.2e} > {FP32_ATOL:.0e}"] if diff > FP32_ATOL else []
            if check.padding_diff > FP32_ATOL:
                problems.append(f"padded vs alone {check.padding_diff:.2e} > {FP32_ATOL:.0e}")
            if ref_name == "fp32":  # compared with itself: the figures would say nothing
                check.reference, check.message = "-", "reference (no checkpoint given)"
                check.max_abs_diff = check.pearson = None
        elif variant == "int8":
            problems = ([f"pearson {pearson:.4f} < {INT8_MIN_PEARSON}"]
                        if not pearson >= INT8_MIN_PEARSON else [])
        else:
            scale = max(1.0, float(np.abs(ref[real]).max()))
            problems = [f"pearson {pearson:.5f} < {FP16_MIN_PEARSON}"] if not pearson >= FP16_MIN_PEARSON else []
            if diff > FP16_RTOL * scale:
                problems.append(f"max|dE| {diff:.2e} > {FP16_RTOL * scale:.2e}")
        if problems:
            check.status, check.message = "fail", "; ".join(problems)
        report.checks.append(check)
    return report


def _read_config_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_checkpoint_model(path: Path) -> tuple[Electric, ModelConfig, dict[str, Any]]:
    """Rebuild an Electric model from a training checkpoint (a safetensors file).

    The ModelConfig comes from the file's metadata key ``model_config`` (JSON) or, failing
    that, from ``config.json`` beside it: either the ModelConfig fields themselves or a
    ``model_config`` / ``model`` entry holding them. Tensors are ``Electric.state_dict()``
    names; the noise model's may be absent (export and verify use only the energy model).

    Returns the model in eval mode, its config, and facts for export: ``tokenizer_path``
    (metadata or config.json ``tokenizer``/``tokenizer_path``, else ``tokenizer.json`` beside
    the checkpoint; None if none is found) and ``training`` (config.json's ``training`` entry,
    else the metadata's ``training`` JSON, else empty).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    side = _read_config_json(path.parent / "config.json")
    if "model_config" in meta:
        fields = json.loads(meta["model_config"])
    elif isinstance(side.get("model_config"), dict):
        fields = side["model_config"]
    elif isinstance(side.get("model"), dict):
        fields = side["model"]
    elif side:
        fields = side
    else:
        raise ValueError(f"{path} has no model_config metadata and no config.json beside it")
    cfg = ModelConfig.from_dict(fields)

    model = Electric(cfg)
    tensors = load_file(str(path))
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("energy.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path} does not match the config: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    model.eval()

    tokenizer = (meta.get("tokenizer_path") or side.get("tokenizer_path") or side.get("tokenizer"))
    if isinstance(tokenizer, str) and not Path(tokenizer).is_absolute():
        tokenizer = str(path.parent / tokenizer)  # relative to the run folder
    if not isinstance(tokenizer, str):
        beside = path.parent / "tokenizer.json"
        tokenizer = str(beside) if beside.is_file() else None
    training = side.get("training")
    if not isinstance(training, dict):
        training = json.loads(meta["training"]) if "training" in meta else {}
    return model, cfg, {"tokenizer_path": tokenizer, "training": training}

"""Parity: does each ONNX variant of an artifact compute what the PyTorch fp32 model computes?

No torch here, so ``electric verify ARTIFACT`` runs from a serving install. The reference is the
artifact's own stored energies (service/artifact/reference.py: the PyTorch fp32 model at export,
each sentence alone), or, with ``--checkpoint``, the live PyTorch model (model_export/verify.py);
both go through :func:`check_variants`. Every variant runs the sentences as one right-padded
batch, as the service sends them. Tolerances, per variant (docs/EXPORT.md, "Verification"):

- fp32: the same computation in another runtime, so only float32 summation order may differ:
  max |ΔE| at real positions ≤ ``FP32_RTOL`` × max(1, max|E_ref|), and each sentence alone
  equal to the same sentence in the padded batch within the same bound (a wrong mask format in
  the fused attention shows up here first).
- fp16: about 3 significant digits per operation: max |ΔE| ≤ ``FP16_RTOL`` × max(1, max|E_ref|)
  and sentence-score Pearson ≥ ``FP16_MIN_PEARSON``. Only where the CUDA execution provider
  really runs it (``session.get_providers()``); elsewhere skipped with the reason, never passed.
- int8: quantisation moves every energy, so the checks are on what re-ranking uses: the Pearson
  correlation of sentence scores (``-Σ E`` over scored tokens) ≥ ``INT8_MIN_PEARSON``, and,
  because a few dozen sentences of different lengths correlate through their lengths alone,
  the token-level error: RMS |ΔE| over scored tokens ≤ ``INT8_MAX_RMS`` × the reference
  energies' standard deviation.

Every variant file's sha256 is checked against the manifest before it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from service.artifact import (
    INPUT_NAMES,
    ArtifactError,
    Manifest,
    VariantName,
    load_manifest,
    verified_variant_path,
)
from service.artifact.reference import load_reference
from service.batch_policy import pad
from service.tokenization import SentenceTokenizer

FP32_RTOL = 1e-4
FP16_RTOL = 2e-2
FP16_MIN_PEARSON = 0.999
INT8_MIN_PEARSON = 0.99
INT8_MAX_RMS = 0.2
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"

Status = Literal["pass", "fail", "skip"]


@dataclass
class VariantCheck:
    variant: str
    """A variant name, or ``tokenizer`` for the check that the stored token ids still come out."""
    status: Status
    reference: str
    """``stored`` (the artifact's reference energies) or ``pytorch`` (a live checkpoint)."""
    provider: str = ""
    max_abs_diff: float | None = None
    """Largest energy difference at real (unpadded) positions."""
    rms: float | None = None
    """RMS energy difference over scored tokens, in units of the reference's standard deviation."""
    pearson: float | None = None
    """Correlation of sentence scores with the reference."""
    padding_diff: float | None = None
    """Largest difference between a sentence alone and the same sentence in the padded batch."""
    message: str = ""


@dataclass
class VerifyReport:
    folder: Path
    references: dict[str, int] = field(default_factory=dict)
    """How many sentences each reference (``stored``, ``pytorch``) was checked on."""
    checks: list[VariantCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No check failed and at least one variant was really run."""
        return (all(c.status != "fail" for c in self.checks)
                and any(c.status == "pass" and c.variant != "tokenizer" for c in self.checks))

    @property
    def verdict(self) -> str:
        """One line: PASSED, or FAILED with what failed and why."""
        failed = [f"{c.variant} vs {c.reference}: {c.message}" for c in self.checks
                  if c.status == "fail"]
        skipped = sorted({c.variant for c in self.checks if c.status == "skip"})
        if failed:
            return "FAILED: " + "; ".join(failed)
        if not self.passed:
            return "FAILED: no variant could be run here (" + ", ".join(skipped) + " skipped)"
        return "PASSED" + (f" ({', '.join(skipped)} skipped)" if skipped else "")

    def table(self) -> str:
        def num(x: float | None, fmt: str) -> str:
            return "-" if x is None else format(x, fmt)

        rows = [("variant", "status", "vs", "provider", "max|dE|", "rms/std", "pearson",
                 "pad|dE|", "note")]
        rows += [(c.variant, c.status.upper(), c.reference,
                  c.provider.replace("ExecutionProvider", ""), num(c.max_abs_diff, ".2e"),
                  num(c.rms, ".3g"), num(c.pearson, ".6f"), num(c.padding_diff, ".2e"),
                  c.message) for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1]
                 for r in rows]
        sets = ", ".join(f"vs {name}: {n} sentences" for name, n in self.references.items())
        return "\n".join([f"{self.folder} ({sets})", *lines, self.verdict])


@dataclass(frozen=True)
class Batch:
    ids: NDArray[np.int64]
    """(B, T) right padded."""
    mask: NDArray[np.int64]
    """(B, T) 1 = real token."""
    scored: NDArray[np.bool_]
    """(B, T) real and not special: the tokens a score sums over."""

    @classmethod
    def pad(cls, rows: Sequence[Sequence[int]], scored: Sequence[Sequence[bool]],
            pad_id: int) -> Batch:
        ids, mask = pad([np.asarray(r, dtype=np.int64) for r in rows], pad_id)
        keep = np.zeros(ids.shape, dtype=np.bool_)
        for i, flags in enumerate(scored):
            keep[i, :len(flags)] = flags
        return cls(ids, mask, keep)


def encode(folder: Path, manifest: Manifest, texts: Sequence[str]) -> Batch:
    """``texts`` through the service's own tokenizer (truncated at max_positions), padded."""
    tok = SentenceTokenizer.from_file(folder / manifest.tokenizer.file,
                                      manifest.architecture.max_positions)
    encoded = tok.encode(texts, truncate=True)
    return Batch.pad([e.ids.tolist() for e in encoded], [e.scored.tolist() for e in encoded],
                     manifest.tokenizer.pad_id)


def scores(energies: NDArray[np.float32], scored: NDArray[np.bool_]) -> NDArray[np.float64]:
    """(B, T) energies -> (B,) sentence scores, -Σ E over scored tokens (float64)."""
    return np.asarray(-(energies.astype(np.float64) * scored).sum(axis=1))


def _pearson(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _session(path: Path, providers: list[str]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the CUDA EP warns about every node it leaves on the CPU
    return ort.InferenceSession(str(path), options, providers=providers)


def _run(session: Any, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> NDArray[np.float32]:
    out = session.run(None, dict(zip(INPUT_NAMES, (ids, mask))))[0]
    return np.asarray(out, dtype=np.float32)  # (B, T)


def _padding_diff(session: Any, batch: Batch, batched: NDArray[np.float32]) -> float:
    """Largest |E(sentence alone) - E(sentence in the padded batch)| over real positions."""
    worst = 0.0
    for i in range(len(batch.ids)):
        n = int(batch.mask[i].sum())
        alone = _run(session, batch.ids[i:i + 1, :n], batch.mask[i:i + 1, :n])[0]
        worst = max(worst, float(np.abs(alone - batched[i, :n]).max()))
    return worst


def _open(folder: Path, manifest: Manifest, variant: VariantName, reference: str
          ) -> tuple[Any, VariantCheck | None]:
    """A session for ``variant``, or the check that says why there is none."""
    import onnxruntime as ort

    try:
        path = verified_variant_path(folder, manifest, variant)
    except ArtifactError as exc:
        return None, VariantCheck(variant, "fail", reference, message=str(exc))
    if variant != "fp16":
        return _session(path, [CPU]), None
    if CUDA not in ort.get_available_providers():
        return None, VariantCheck(variant, "skip", reference, message="sha256 ok; not run: "
                                  "this onnxruntime build has no CUDAExecutionProvider (fp16 "
                                  "kernels are CUDA only)")
    session = _session(path, [CUDA, CPU])
    if session.get_providers()[0] != CUDA:
        return None, VariantCheck(variant, "skip", reference, message="sha256 ok; not run: the "
                                  "CUDA execution provider did not start (no GPU visible?)")
    return session, None


def _compare(variant: VariantName, session: Any, batch: Batch, ref: NDArray[np.float32],
             reference: str) -> VariantCheck:
    out = _run(session, batch.ids, batch.mask)
    check = VariantCheck(variant, "pass", reference, session.get_providers()[0])
    real = batch.mask == 1
    if not np.isfinite(out[real]).all():
        check.status, check.message = "fail", "non-finite energies"
        return check
    delta = (out - ref).astype(np.float64)
    scale = max(1.0, float(np.abs(ref[real]).max()))
    check.max_abs_diff = float(np.abs(delta[real]).max())
    check.rms = float(np.sqrt((delta[batch.scored] ** 2).mean())
                      / ref[batch.scored].astype(np.float64).std())
    check.pearson = _pearson(scores(out, batch.scored), scores(ref, batch.scored))
    problems = []
    if variant == "fp32":
        check.padding_diff = _padding_diff(session, batch, out)
        if not check.max_abs_diff <= FP32_RTOL * scale:
            problems.append(f"max|dE| {check.max_abs_diff:.2e} > {FP32_RTOL * scale:.2e}")
        if not check.padding_diff <= FP32_RTOL * scale:
            problems.append(f"padded vs alone {check.padding_diff:.2e} > {FP32_RTOL * scale:.2e}")
    elif variant == "fp16":
        if not check.max_abs_diff <= FP16_RTOL * scale:
            problems.append(f"max|dE| {check.max_abs_diff:.2e} > {FP16_RTOL * scale:.2e}")
        if not check.pearson >= FP16_MIN_PEARSON:
            problems.append(f"pearson {check.pearson:.5f} < {FP16_MIN_PEARSON}")
    else:
        if not check.rms <= INT8_MAX_RMS:
            problems.append(f"rms/std {check.rms:.3f} > {INT8_MAX_RMS}")
        if not check.pearson >= INT8_MIN_PEARSON:
            problems.append(f"pearson {check.pearson:.4f} < {INT8_MIN_PEARSON}")
    if problems:
        check.status, check.message = "fail", "; ".join(problems)
    return check


def check_variants(folder: Path, manifest: Manifest, batch: Batch, ref: NDArray[np.float32],
                   reference: str) -> list[VariantCheck]:
    """Run every variant of the artifact on ``batch`` and compare with ``ref`` (B, T)."""
    if len(batch.ids) < 3:
        raise ValueError(f"{len(batch.ids)} sentences: a score correlation needs at least 3")
    checks = []
    for variant in (v for v in ("fp32", "fp16", "int8") if v in manifest.variants):
        session, refused = _open(folder, manifest, variant, reference)
        checks.append(refused or _compare(variant, session, batch, ref, reference))
    return checks


def verify_reference(folder: Path) -> VerifyReport:
    """Check every variant of ``folder`` against its stored reference energies.

    Raises :class:`ArtifactError` when the artifact has no reference energies or they do not
    match the manifest's sha256: such an artifact cannot be verified without its checkpoint.
    """
    manifest = load_manifest(folder)
    sentences = load_reference(folder, manifest)
    report = VerifyReport(folder, {"stored": len(sentences)})
    # The tokenizer is not pinned by a sha256; the stored ids show it still encodes the same.
    encoded = encode(folder, manifest, [s.text for s in sentences])
    changed = [s.text for i, s in enumerate(sentences)
               if encoded.ids[i, :int(encoded.mask[i].sum())].tolist() != list(s.ids)]
    report.checks.append(VariantCheck(
        "tokenizer", "fail" if changed else "pass", "stored",
        message=(f"{len(changed)} sentences encode differently, e.g. {changed[0]!r}" if changed
                 else "every sentence encodes to the stored ids")))
    # Scored = not [CLS] / [SEP] / [PAD], read off the stored ids so that a changed tokenizer
    # does not stop the variants being checked.
    specials = _special_ids(folder, manifest)
    batch = Batch.pad([s.ids for s in sentences], [[i not in specials for i in s.ids]
                                                   for s in sentences], manifest.tokenizer.pad_id)
    ref = np.zeros(batch.ids.shape, dtype=np.float32)
    for i, s in enumerate(sentences):
        ref[i, :len(s.ids)] = s.energies
    report.checks += check_variants(folder, manifest, batch, ref, "stored")
    return report


def _special_ids(folder: Path, manifest: Manifest) -> set[int]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / manifest.tokenizer.file))
    names = manifest.tokenizer.special_tokens
    found = (tok.token_to_id(t) for t in (names.cls, names.sep))
    return {manifest.tokenizer.pad_id, *(int(i) for i in found if i is not None)}

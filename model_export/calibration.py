"""Calibration for the row-wise int8 variant: text in, one quantisation plan per MatMul out.

Row-wise int8 (optimize.py) quantises each token's activation row at run time with its own
scale, so nothing measured here fixes an activation range. Calibration text decides the rest,
per MatMul, from the float activations the node really sees:

- **Smoothing** (Xiao et al. 2023, "SmoothQuant", eq. 4): a per-input-channel factor
  ``s_j = max|X_j|^a / max|W_j|^(1-a)`` divides the activation and multiplies the weight row, so
  the product is unchanged while the few channels that carry huge values in every token (the
  residual stream's outlier dimensions after LayerNorm) stop setting every row's scale. ``a`` is
  picked per node from ``ALPHAS`` (``None``: no smoothing) by output SQNR on the calibration rows.
- **Zero point**: one uint8 zero point per node (ONNX Runtime's ``MatMulIntegerToFloat`` takes a
  scalar one), the value that makes the row scales smallest on average; GELU outputs want a low
  one, LayerNorm outputs one near the middle.
- **Float outlier channels**: where keeping the ``OUTLIER_CHANNELS`` input channels with the
  largest values in float raises the node's SQNR by ``OUTLIER_MIN_GAIN_DB`` or more (the FFN
  down-projections, whose GELU inputs have rare spikes), they leave the int8 product and go
  through a small float MatMul instead (Dettmers et al. 2022, "LLM.int8()", with fixed channels).
- **7-bit weights** (``WEIGHT_MAX``): the integer product must be exact on every CPU, and x86
  CPUs without VNNI (AVX2 only, common in clouds) multiply uint8 by int8 with ``vpmaddubsw``,
  which adds each pair of adjacent products into a *saturating* int16. With activations up to
  255 and weights in [-63, 63] a pair is at most 2 * 255 * 63 = 32,130 < 32,767, so no sum can
  saturate and AVX2, AVX-512, VNNI, AMX and ARM64 kernels all compute the same int32 result
  (tests/model_export/test_quantize.py emulates the AVX2 pair sum to prove it; docs/EXPORT.md has the
  measurements, including uint8 weights, which are exact too but 3x slower on VNNI).
- **Weight rounding**: GPTQ (Frantar et al. 2023, algorithm 1 without lazy batches): rows of W
  are rounded one at a time and the rounding error is pushed onto the rows not yet rounded,
  weighted by the calibration inputs' Hessian ``X^T X``; per-output-channel scales stay absmax.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from model_export.corpus import read_lines
from service.artifact import INPUT_NAMES
from service.batch_policy import pad

DEFAULT_SENTENCES = 512
"""Calibration sentences drawn from the given files: ~12k tokens, enough for stable plans."""
MAX_LENGTH = 128
"""Calibration sequences are cut here: activations' statistics do not need long ones."""
MAX_ROWS = 4096
"""Token rows kept per node for the plan (a seeded sample); channel maxima use every row."""
ALPHAS: tuple[float | None, ...] = (None, 0.25, 0.5, 0.75)
OUTLIER_CHANNELS = 4
OUTLIER_MIN_GAIN_DB = 2.0
WEIGHT_MAX = 63
"""Largest |integer weight|: 2 * 255 * 63 fits a signed 16-bit pair sum (module docstring)."""
GPTQ_DAMPING = 0.01
"""Added to the Hessian's diagonal, relative to its mean: keeps the inverse stable when the
calibration rows do not span every input direction (GPTQ, section 4, uses the same 1%)."""


def read_sentences(paths: Sequence[Path], n: int = DEFAULT_SENTENCES, seed: int = 0, *,
                   min_words: int = 3, max_words: int = 60) -> list[str]:
    """A seeded sample of ``n`` lines, spread evenly over the files (one sentence or paragraph a
    line, gzipped when named ``*.gz``), skipping lines under ``min_words`` or over ``max_words``."""
    if not paths:
        raise ValueError("no calibration files given")
    rng = random.Random(seed)
    per_file = [[line.strip() for line in read_lines([p])
                 if min_words <= len(line.split()) <= max_words] for p in paths]
    out: list[str] = []
    # Smallest file first, so what a short file cannot give is shared among the longer ones.
    for i, lines in enumerate(sorted(per_file, key=len)):
        want = (n - len(out)) // (len(per_file) - i)
        out += rng.sample(lines, min(want, len(lines)))
    if not out:
        raise ValueError(f"no line of {[str(p) for p in paths]} has {min_words}-{max_words} words")
    return out


def encode_batches(tokenizer_path: Path, sentences: Sequence[str], *, max_length: int = MAX_LENGTH,
                   batch_size: int = 32) -> list[tuple[np.ndarray, np.ndarray]]:
    """Right-padded (B, T) int64 ``input_ids`` / ``attention_mask`` batches, as the service sends."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.enable_truncation(max_length)
    pad_id = tok.token_to_id("[PAD]") or 0
    return [pad([np.asarray(e.ids, dtype=np.int64)
                 for e in tok.encode_batch(list(sentences[i:i + batch_size]))], pad_id)
            for i in range(0, len(sentences), batch_size)]


@dataclass
class Activations:
    """What one tensor held over the calibration text, at real (unpadded) positions."""

    rows: np.ndarray
    """(R, K) a seeded sample of token rows."""
    absmax: np.ndarray
    """(K,) per-channel max |x| over every row."""


def record(model: onnx.ModelProto, names: Iterable[str],
           batches: Sequence[tuple[np.ndarray, np.ndarray]], *, seed: int = 0,
           max_rows: int = MAX_ROWS) -> dict[str, Activations]:
    """Run the float graph on ``batches`` and record the tensors ``names`` (each (B, T, K))."""
    import onnxruntime as ort

    names = list(dict.fromkeys(names))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                              for n in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    total = sum(int(mask.sum()) for _, mask in batches)
    keep = min(1.0, max_rows / max(total, 1))
    rng = np.random.default_rng(seed)
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    absmax: dict[str, np.ndarray] = {}
    for ids, mask in batches:
        outs = session.run(names, dict(zip(INPUT_NAMES, (ids, mask))))
        real = mask == 1
        sample = rng.random(int(real.sum())) < keep
        for name, out in zip(names, outs):
            x = out[real]  # (tokens, K)
            absmax[name] = np.maximum(absmax.get(name, 0.0), np.abs(x).max(axis=0))
            rows[name].append(x[sample])
    return {n: Activations(np.concatenate(rows[n]), absmax[n]) for n in names}


@dataclass
class NodePlan:
    """How one MatMul is quantised: ``x @ w ≈ (q(x * inverse) @ weight) + x[:, outliers] @ float``."""

    inverse: np.ndarray
    """(K,) float32 input multiplier: 1 / smoothing, 0 at the outlier channels."""
    weight: np.ndarray
    """(K, N) int8, rows of the outlier channels zero."""
    weight_scale: np.ndarray
    """(N,) float32 per output channel."""
    zero_point: int
    outliers: np.ndarray
    """(k,) int64 input channels computed in float (k may be 0)."""
    outlier_weight: np.ndarray
    """(k, N) float32 rows of the original weight for them."""
    alpha: float | None
    sqnr_db: float
    """Output signal-to-quantisation-noise ratio on the calibration rows, in dB."""

    @property
    def smoothed(self) -> bool:
        return self.alpha is not None


def _smoothing(absmax: np.ndarray, w: np.ndarray, alpha: float | None) -> np.ndarray:
    """(K,) SmoothQuant factors, geometric mean 1 so the int8 ranges stay in their usual scale."""
    if alpha is None:
        return np.ones(len(absmax))
    s = np.maximum(absmax, 1e-5) ** alpha / np.maximum(np.abs(w).max(axis=1), 1e-5) ** (1 - alpha)
    return s / np.exp(np.log(s).mean())


def _zero_point(x: np.ndarray) -> int:
    """The uint8 zero point Z minimising the mean row scale ``max(max_r / (255 - Z), -min_r / Z)``."""
    hi = np.maximum(x.max(axis=1), 0.0)
    lo = np.maximum(-x.min(axis=1), 0.0)
    z = np.arange(1, 255)[:, None]
    return int(z[np.argmin(np.maximum(hi / (255 - z), lo / z).mean(axis=1)), 0])


def quantize_rows(x: np.ndarray, zero_point: int) -> np.ndarray:
    """What the graph computes: each row uint8 with its own scale and the node's zero point,
    returned dequantised (float64)."""
    hi = np.maximum(x.max(axis=1, keepdims=True), 0.0)
    lo = np.maximum(-x.min(axis=1, keepdims=True), 0.0)
    scale = np.maximum(np.maximum(hi / (255 - zero_point), lo / zero_point), 1e-12)
    q = np.clip(np.round(x / scale) + zero_point, 0, 255)
    return (q - zero_point) * scale


def _weight_scale(w: np.ndarray) -> np.ndarray:
    scale = np.abs(w).max(axis=0) / WEIGHT_MAX  # (N,)
    scale[scale == 0] = 1.0
    return scale


def gptq(w: np.ndarray, x: np.ndarray, scale: np.ndarray,
         damping: float = GPTQ_DAMPING) -> np.ndarray:
    """(K, N) int8 rounding (within +-WEIGHT_MAX) of ``w`` that keeps ``x @ w`` close, with fixed per-column ``scale``."""
    K = w.shape[0]
    H = x.T.astype(np.float64) @ x.astype(np.float64)  # (K, K)
    dead = np.diag(H) == 0  # channels never active (e.g. the float outliers): nothing to keep
    H[dead, dead] = 1.0
    H += damping * np.mean(np.diag(H)) * np.eye(K)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper Cholesky factor of H^-1
    W = w.astype(np.float64).copy()
    Q = np.zeros(w.shape, dtype=np.int8)
    for k in range(K):
        q = np.clip(np.round(W[k] / scale), -WEIGHT_MAX, WEIGHT_MAX)
        Q[k] = q
        err = (W[k] - q * scale) / U[k, k]  # (N,)
        W[k + 1:] -= np.outer(U[k, k + 1:], err)
    return Q


def _candidate(x: np.ndarray, y: np.ndarray, absmax: np.ndarray, w: np.ndarray,
               alpha: float | None, outliers: int) -> tuple[float, np.ndarray, np.ndarray, int]:
    """(SQNR dB with round-to-nearest weights, inverse multiplier, outlier channels, zero point)."""
    s = _smoothing(absmax, w, alpha)
    inverse = 1.0 / s
    idx = np.argsort(-absmax * inverse, kind="stable")[:outliers]
    inverse[idx] = 0.0
    xs, ws = x * inverse, w * s[:, None]
    ws[idx] = 0.0
    zp = _zero_point(xs)
    scale = _weight_scale(ws)
    wq = np.clip(np.round(ws / scale), -WEIGHT_MAX, WEIGHT_MAX) * scale
    y_hat = quantize_rows(xs, zp) @ wq + x[:, idx] @ w[idx]
    noise = float(((y - y_hat) ** 2).mean())
    db = 10 * np.log10(float((y ** 2).mean()) / noise) if noise > 0 else float("inf")
    return db, inverse, idx.astype(np.int64), zp


def plan_node(acts: Activations, w: np.ndarray) -> NodePlan:
    """The best plan for weight ``w`` (K, N) fed by ``acts`` (see the module docstring)."""
    x = acts.rows.astype(np.float64)
    w = w.astype(np.float64)
    if len(x) == 0:
        raise ValueError("no calibration rows: give at least one non-empty sentence")
    y = x @ w
    best = {k: max(((*_candidate(x, y, acts.absmax, w, a, k), a) for a in ALPHAS),
                   key=lambda c: c[0])
            for k in (0, min(OUTLIER_CHANNELS, w.shape[0] // 8))}
    k = max(best)
    if k == 0 or best[k][0] < best[0][0] + OUTLIER_MIN_GAIN_DB:
        k = 0
    db, inverse, idx, zp, alpha = best[k]
    ws = w / np.where(inverse == 0, np.inf, inverse)[:, None]  # smoothed rows, outliers zero
    scale = _weight_scale(ws)
    return NodePlan(inverse=inverse.astype(np.float32), weight=gptq(ws, x * inverse, scale),
                    weight_scale=scale.astype(np.float32), zero_point=zp, outliers=idx,
                    outlier_weight=w[idx].astype(np.float32), alpha=alpha, sqnr_db=db)

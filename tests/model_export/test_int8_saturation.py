"""Both int8 schemes give the same answers on every CPU: a machine-independent proof.

ONNX Runtime multiplies uint8 activations by int8 weights. With VNNI (``vpdpbusd``), AMX or
ARM64's dot products the int32 accumulation is exact. Without VNNI (AVX2 only) it uses
``vpmaddubsw``: each pair of adjacent products is summed into a signed 16-bit integer that
saturates, and only then widened. Here that instruction is emulated in numpy, and the weights
the exporter writes are shown to keep every pair sum in range, so AVX2 computes exactly what
VNNI computes. (Emulating the whole CPU, e.g. ``qemu-x86_64 -cpu Haswell``, shows the same on
the real kernels; docs/EXPORT.md.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from tiny_models import SENTENCES, build_tiny_electric

from model_export.calibration import WEIGHT_MAX
from model_export.export import VARIANT_FILES, export_artifact

INT16_MAX = 2**15 - 1
# Ops whose second input is an integer weight multiplied with uint8 activations.
INTEGER_MATMULS = ("MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "QAttention")


def avx2_matmul(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(M, K) uint8 @ (K, N) int8 as ``vpmaddubsw`` + ``vpmaddwd`` compute it: adjacent products
    summed in pairs into a saturating int16, then the pairs added in int32."""
    K = a.shape[1]
    if K % 2:  # the kernels pad K with zeros to whole pairs
        a, w = np.pad(a, ((0, 0), (0, 1))), np.pad(w, ((0, 1), (0, 0)))
    products = a.astype(np.int32)[:, :, None] * w.astype(np.int32)[None, :, :]  # (M, K, N)
    pairs = products[:, 0::2] + products[:, 1::2]
    return np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(axis=1)


def integer_weights(graph: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {t.name: t for t in graph.graph.initializer}
    return {n.input[1]: numpy_helper.to_array(inits[n.input[1]]) for n in graph.graph.node
            if n.op_type in INTEGER_MATMULS and n.input[1] in inits}


@pytest.fixture(scope="module")
def rowwise_artifact(tiny_tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_tiny_electric()
    folder = tmp_path_factory.mktemp("rowwise") / "tiny-rowwise"
    export_artifact(model, model.cfg, tiny_tokenizer_path, folder, name="tiny-rowwise",
                    variants=("fp32", "int8"), int8_scheme="rowwise", calibration=SENTENCES)
    return folder


def test_emulation_saturates_8_bit_weights_as_avx2_does() -> None:
    # The failure the bound rules out: full-range weights against loud activations.
    a = np.full((1, 4), 255, dtype=np.uint8)
    w = np.full((4, 1), 127, dtype=np.int8)
    assert int(avx2_matmul(a, w)[0, 0]) == 2 * INT16_MAX  # two saturated pairs
    assert int((a.astype(np.int64) @ w.astype(np.int64))[0, 0]) == 4 * 255 * 127
    # The bound is tight: one step more than WEIGHT_MAX already saturates somewhere.
    assert 2 * 255 * WEIGHT_MAX <= INT16_MAX < 2 * 255 * (2 * WEIGHT_MAX + 1)


@pytest.mark.parametrize("scheme", ["rowwise", "dynamic"])
def test_exported_weights_cannot_saturate(scheme: str, rowwise_artifact: Path,
                                          tiny_artifact: Path) -> None:
    folder = rowwise_artifact if scheme == "rowwise" else tiny_artifact
    weights = integer_weights(onnx.load(str(folder / VARIANT_FILES["int8"])))
    assert weights, "no integer MatMul in the int8 graph"
    rng = np.random.default_rng(0)
    for name, w in weights.items():
        assert w.dtype == np.int8, name
        # |a1 w1 + a2 w2| <= 2 * 255 * max|w| for any uint8 activations.
        assert 2 * 255 * int(np.abs(w.astype(np.int32)).max()) <= INT16_MAX, name
        w2 = w.reshape(w.shape[0], -1)  # QAttention's weight is (K, 3D) too
        # The worst activations (255 everywhere) and random ones: AVX2 == exact int32.
        a = np.concatenate([np.full((1, w2.shape[0]), 255),
                            rng.integers(0, 256, size=(7, w2.shape[0]))]).astype(np.uint8)
        exact = a.astype(np.int64) @ w2.astype(np.int64)
        np.testing.assert_array_equal(avx2_matmul(a, w2), exact, err_msg=name)


def test_rowwise_uses_the_7_bit_range(rowwise_artifact: Path) -> None:
    # GPTQ rounds within the range and absmax scales reach its ends: no level is wasted.
    weights = integer_weights(onnx.load(str(rowwise_artifact / VARIANT_FILES["int8"])))
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in weights.values()) == WEIGHT_MAX

"""Row-wise int8 (optimize.quantize_rowwise, calibration.py): batch independence, parity with
PyTorch, the kernels ONNX Runtime really runs, calibration text, and the export flags."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import SENTENCES, build_tiny_electric, encode_padded

from electric.cli import main
from model_export.calibration import (
    WEIGHT_MAX,
    Activations,
    gptq,
    plan_node,
    quantize_rows,
    read_sentences,
)
from model_export.export import VARIANT_FILES, export_artifact
from model_export.optimize import op_counts, quantize_int8
from model_export.verify import verify_artifact
from service.artifact import load_manifest

# A sentence alone and in a padded batch go through the same float kernels row by row; only
# summation order inside a kernel could differ.
BATCH_ATOL = 1e-5


@pytest.fixture(scope="module")
def model():
    return build_tiny_electric()


@pytest.fixture(scope="module")
def rowwise_artifact(model, tiny_tokenizer_path, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rowwise") / "tiny-rowwise"
    export_artifact(model, model.cfg, tiny_tokenizer_path, folder, name="tiny-rowwise",
                    variants=("fp32", "int8"), int8_scheme="rowwise", calibration=SENTENCES)
    return folder


def session(folder: Path, variant: str = "int8") -> ort.InferenceSession:
    return ort.InferenceSession(str(folder / VARIANT_FILES[variant]),
                                providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def random_batch(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(16, 20) token ids unlike the calibration sentences, one row padded."""
    ids = np.random.default_rng(seed).integers(5, 214, size=(16, 20), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = np.ones_like(ids)
    mask[3, 10:] = 0
    ids[3, 10:] = 0
    return ids, mask


def torch_energies(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.energy(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def test_sentence_scores_do_not_depend_on_the_batch(rowwise_artifact, sentences):
    ids, mask = encode_padded(sentences)
    sess = session(rowwise_artifact)
    batched = run(sess, ids, mask)
    # A loud companion: dynamic quantisation would coarsen every row for it.
    loud_ids, loud_mask = encode_padded([*sentences, " ".join(["xyzzy"] * 10)])
    with_loud = run(sess, loud_ids, loud_mask)
    for i in range(len(sentences)):
        n = int(mask[i].sum())
        alone = run(sess, ids[i:i + 1, :n], mask[i:i + 1, :n])[0]
        np.testing.assert_allclose(alone, batched[i, :n], atol=BATCH_ATOL)
        np.testing.assert_allclose(alone, with_loud[i, :n], atol=BATCH_ATOL)


def test_close_to_pytorch_and_closer_than_dynamic(rowwise_artifact, tiny_artifact, model):
    ids, mask = random_batch()
    ref = torch_energies(model, ids, mask)
    real = mask == 1

    def rms(folder: Path) -> float:
        return float(np.sqrt(((run(session(folder), ids, mask) - ref)[real] ** 2).mean()))

    rowwise, dynamic = rms(rowwise_artifact), rms(tiny_artifact)
    assert rowwise <= 0.02 * np.abs(ref[real]).max()
    assert rowwise < dynamic


def test_any_mask_layout(rowwise_artifact, model):
    # MultiHeadAttention gets the raw 1/0 mask as the fused Attention did: left padding and
    # holes must work, not only right padding.
    ids = np.random.default_rng(1).integers(5, 214, size=(3, 10), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, :4] = 0
    mask[1, 3:5] = 0
    ref = torch_energies(model, ids, mask)
    out = run(session(rowwise_artifact), ids, mask)
    assert np.abs(out - ref)[mask == 1].max() <= 0.05 * np.abs(ref[mask == 1]).max()


def test_verify_passes(rowwise_artifact, model, sentences):
    report = verify_artifact(rowwise_artifact, model, sentences)
    assert report.passed, report.table()
    assert {c.variant: c for c in report.checks}["int8"].pearson >= 0.999


def test_onnx_runtime_runs_int8_kernels(rowwise_artifact, model, tmp_path):
    graph = onnx.load(str(rowwise_artifact / VARIANT_FILES["int8"]))
    counts = op_counts(graph)
    layers = model.cfg.layers
    assert counts.get("MatMulIntegerToFloat") == 4 * layers  # QKV, attention out, FFN in, out
    assert counts.get("MultiHeadAttention") == layers
    for gone in ("Attention", "QAttention", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"):
        assert gone not in counts
    # The energy head stays float: two MatMuls on float weights after the last LayerNorm.
    nodes = list(graph.graph.node)
    last_norm = max(i for i, n in enumerate(nodes) if n.op_type == "SkipLayerNormalization")
    assert [n.op_type for n in nodes[last_norm:]].count("MatMul") == 2
    # What the session runs after its own graph optimisations: still the integer kernel.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(rowwise_artifact / VARIANT_FILES["int8"]), options,
                         providers=["CPUExecutionProvider"])
    optimized = op_counts(onnx.load(str(tmp_path / "optimized.onnx")))
    assert optimized.get("MatMulIntegerToFloat") == 4 * layers


def test_manifest_records_the_scheme(rowwise_artifact):
    int8 = load_manifest(rowwise_artifact).training["onnx"]["int8"]
    assert int8["scheme"] == "rowwise"
    assert int8["calibration_sentences"] == len(SENTENCES)
    assert int8["nodes"] == 4 * build_tiny_electric().cfg.layers
    assert int8["calibration_tokens"] > len(SENTENCES)


def test_rowwise_needs_calibration(model, tiny_tokenizer_path, tiny_artifact, tmp_path):
    with pytest.raises(ValueError, match="calibration"):
        export_artifact(model, model.cfg, tiny_tokenizer_path, tmp_path / "a", name="x",
                        int8_scheme="rowwise")
    with pytest.raises(ValueError, match="calibration"):
        quantize_int8(tiny_artifact / VARIANT_FILES["fp32"], tmp_path / "b.onnx",
                      scheme="rowwise")
    with pytest.raises(ValueError, match="scheme"):
        quantize_int8(tiny_artifact / VARIANT_FILES["fp32"], tmp_path / "c.onnx",
                      scheme="static")  # type: ignore[arg-type]


def test_read_sentences(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("\n".join(f"plain sentence number {i}" for i in range(50)) + "\n\nshort\n")
    packed = tmp_path / "b.txt.gz"
    with gzip.open(packed, "wt") as f:
        f.write("\n".join(f"gzipped sentence number {i}" for i in range(5)))
    got = read_sentences([plain, packed], n=20, seed=1)
    assert len(got) == 20 and len(set(got)) == 20
    # Even spread: the small file gives all it has, the other file makes up the rest.
    assert sum(s.startswith("gzipped") for s in got) == 5
    assert "short" not in got  # under min_words
    assert got == read_sentences([plain, packed], n=20, seed=1)
    assert got != read_sentences([plain, packed], n=20, seed=2)
    with pytest.raises(ValueError, match="words"):
        read_sentences([plain], n=5, min_words=10)


def test_gptq_beats_round_to_nearest():
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(48, 48))
    x = rng.normal(size=(600, 48)) @ mix  # correlated channels, as real activations are
    w = rng.normal(size=(48, 16))
    scale = np.abs(w).max(axis=0) / WEIGHT_MAX
    nearest = np.clip(np.round(w / scale), -WEIGHT_MAX, WEIGHT_MAX)

    def error(q: np.ndarray) -> float:
        return float(((x @ w - x @ (q * scale)) ** 2).mean())

    assert error(gptq(w, x, scale).astype(np.float64)) < 0.7 * error(nearest)


def test_plan_tames_an_outlier_channel():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 64))
    x[:, 7] *= 60.0  # a residual-stream outlier dimension: large in every token
    w = rng.normal(size=(64, 32)) * 0.1
    plan = plan_node(Activations(x, np.abs(x).max(axis=0)), w)
    y = x @ w
    plain = 10 * np.log10((y ** 2).mean() / ((y - quantize_rows(x, 128) @ w) ** 2).mean())
    assert plan.sqnr_db > plain + 6
    assert plan.smoothed or 7 in plan.outliers


def test_export_flags(model, tiny_tokenizer_path, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(run / "final.safetensors"))
    (run / "tokenizer.json").write_text(Path(tiny_tokenizer_path).read_text())
    (run / "config.json").write_text(json.dumps({"model_config": model.cfg.to_dict(),
                                                 "tokenizer_path": "tokenizer.json"}))
    checkpoint = str(run / "final.safetensors")
    with pytest.raises(SystemExit, match="--calibration"):
        main(["export", checkpoint, "--out", str(tmp_path / "a"), "--int8-scheme", "rowwise"])
    text = tmp_path / "calibration.txt"
    text.write_text("\n".join(SENTENCES))
    assert main(["export", checkpoint, "--out", str(tmp_path / "b"), "--int8-scheme", "rowwise",
                 "--calibration", str(text)]) == 0
    assert load_manifest(tmp_path / "b").training["onnx"]["int8"]["scheme"] == "rowwise"
    # Without int8 there is nothing to calibrate.
    assert main(["export", checkpoint, "--out", str(tmp_path / "c"), "--int8-scheme", "rowwise",
                 "--variants", "fp32"]) == 0

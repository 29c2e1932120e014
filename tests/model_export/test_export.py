"""ONNX export: parity with PyTorch, padding and shape behaviour, fusion, manifest, verification."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import build_tiny_electric, encode_padded
from tokenizers import Tokenizer

from model_export.checkpoint import load_checkpoint_model
from model_export.export import VARIANT_FILES, export_artifact
from model_export.optimize import op_counts
from model_export.verify import verify_artifact
from service.artifact import ArtifactError, load_manifest, verified_variant_path

FP32_ATOL = 1e-4


@pytest.fixture(scope="module")
def model():
    """The same seeded model tiny_artifact was exported from."""
    return build_tiny_electric()


def session(folder: Path, variant: str = "fp32") -> ort.InferenceSession:
    return ort.InferenceSession(str(folder / VARIANT_FILES[variant]),
                                providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return sess.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def torch_energies(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.energy(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


def test_fp32_matches_pytorch(tiny_artifact, model, sentences):
    ids, mask = encode_padded(sentences)
    ref = torch_energies(model, ids, mask)
    out = run(session(tiny_artifact), ids, mask)
    assert out.shape == ids.shape and out.dtype == np.float32
    # The model is far from flat, so agreement is not a coincidence of tiny numbers.
    assert np.abs(ref[mask == 1]).max() > 0.1
    assert np.abs(out - ref)[mask == 1].max() <= FP32_ATOL


def test_sentence_alone_equals_sentence_in_padded_batch(tiny_artifact, sentences):
    ids, mask = encode_padded(sentences)
    sess = session(tiny_artifact)
    batched = run(sess, ids, mask)
    for i in range(len(sentences)):
        n = int(mask[i].sum())
        alone = run(sess, ids[i:i + 1, :n], mask[i:i + 1, :n])[0]
        np.testing.assert_allclose(alone, batched[i, :n], atol=FP32_ATOL)


@pytest.mark.parametrize("shape", [(1, 3), (5, 17), (3, 64), (16, 9)])
def test_dynamic_batch_and_sequence_axes(tiny_artifact, model, shape):
    rng = np.random.default_rng(sum(shape))
    ids = rng.integers(5, 214, size=shape, dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, max(1, shape[1] // 2):] = 0  # one padded row
    ref = torch_energies(model, ids, mask)
    out = run(session(tiny_artifact), ids, mask)
    assert np.abs(out - ref)[mask == 1].max() <= FP32_ATOL


def test_fused_attention_honours_any_mask_not_only_right_padding(tiny_artifact, model):
    # A "number of real tokens" mask format would get left padding and holes wrong.
    ids = np.random.default_rng(1).integers(5, 214, size=(3, 10), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, :4] = 0  # left padded
    mask[1, 3:5] = 0  # a hole
    ref = torch_energies(model, ids, mask)
    out = run(session(tiny_artifact), ids, mask)
    assert np.abs(out - ref)[mask == 1].max() <= FP32_ATOL
    # QAttention takes the same raw mask; int8 is only approximately equal.
    int8 = run(session(tiny_artifact, "int8"), ids, mask)
    assert np.abs(int8 - ref)[mask == 1].max() <= 0.1 * np.abs(ref[mask == 1]).max()


def test_graph_is_fused(tiny_artifact, model):
    counts = op_counts(onnx.load(str(tiny_artifact / VARIANT_FILES["fp32"])))
    assert counts.get("Attention", 0) == model.cfg.layers
    assert counts.get("SkipLayerNormalization", 0) > 0
    assert counts.get("Softmax", 0) == 0  # no unfused attention left behind
    fused = load_manifest(tiny_artifact).training["onnx"]["fused_ops"]
    assert fused["Attention"] == model.cfg.layers
    int8 = op_counts(onnx.load(str(tiny_artifact / VARIANT_FILES["int8"])))
    assert int8.get("QAttention", 0) + int8.get("DynamicQuantizeMatMul", 0) + \
        int8.get("MatMulInteger", 0) > 0


def test_manifest_and_folder(tiny_artifact, model, tiny_tokenizer_path):
    manifest = load_manifest(tiny_artifact)
    assert manifest.name == "tiny-test"
    assert set(manifest.variants) == {"fp32", "int8"}
    assert manifest.variants["fp32"].providers == ["CPUExecutionProvider"]
    assert manifest.architecture.vocab_size == 214 == model.cfg.vocab_size
    assert manifest.architecture.max_positions == 64
    for variant in manifest.variants:
        verified_variant_path(tiny_artifact, manifest, variant)
    # Only the artifact's own files: no intermediate graphs.
    assert sorted(p.name for p in tiny_artifact.iterdir()) == [
        "electric.json", "model.fp32.onnx", "model.int8.onnx", "reference.json", "tokenizer.json"]
    assert manifest.reference is not None
    tok = json.loads((tiny_artifact / "tokenizer.json").read_text())
    assert tok["padding"] is None and tok["truncation"] is None
    assert Tokenizer.from_file(str(tiny_artifact / "tokenizer.json")).get_vocab() == \
        Tokenizer.from_file(str(tiny_tokenizer_path)).get_vocab()


def test_verify_passes_with_and_without_checkpoint(tiny_artifact, model, sentences):
    report = verify_artifact(tiny_artifact, model, sentences)
    assert report.passed, report.table()
    by_name = {c.variant: c for c in report.checks if c.reference == "pytorch"}
    assert by_name["fp32"].max_abs_diff <= FP32_ATOL
    assert by_name["int8"].pearson >= 0.99
    alone = verify_artifact(tiny_artifact)  # the stored reference energies only
    assert alone.passed, alone.table()
    assert {c.reference for c in alone.checks} == {"stored"}
    assert "int8" in alone.table() and "PASSED" in alone.table()


def test_tampered_variant_is_detected(tiny_artifact, tmp_path):
    folder = tmp_path / "tampered"
    shutil.copytree(tiny_artifact, folder)
    path = folder / VARIANT_FILES["int8"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    manifest = load_manifest(folder)
    with pytest.raises(ArtifactError, match="sha256"):
        verified_variant_path(folder, manifest, "int8")
    report = verify_artifact(folder)
    assert not report.passed
    status = {c.variant: c.status for c in report.checks}
    assert status == {"tokenizer": "pass", "fp32": "pass", "int8": "fail"}
    assert "sha256" in report.table()


def test_wrong_model_fails_verification(tiny_artifact, sentences):
    other = build_tiny_electric(seed=1)
    report = verify_artifact(tiny_artifact, other, sentences)
    assert not report.passed
    live = {c.variant: c.status for c in report.checks if c.reference == "pytorch"}
    assert live["fp32"] == "fail"


def test_fp16_variant_is_written_and_skipped_without_cuda(model, tiny_tokenizer_path, sentences,
                                                          tmp_path):
    folder = tmp_path / "with-fp16"
    (folder).mkdir()
    (folder / "model.fp16.onnx").write_text("stale")  # an earlier export's file is replaced
    manifest = export_artifact(model, model.cfg, tiny_tokenizer_path, folder, name="fp16",
                               variants=("fp32", "fp16"))
    assert manifest.variants["fp16"].providers == ["CUDAExecutionProvider"]
    verified_variant_path(folder, manifest, "fp16")
    graph = onnx.load(str(folder / VARIANT_FILES["fp16"])).graph
    # Same inputs and outputs as every variant: int64 in, float32 out.
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.INT64] * 2
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    report = verify_artifact(folder, model, sentences)
    assert report.passed, report.table()
    fp16 = {c.variant: c for c in report.checks}["fp16"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert fp16.status == "skip" and "CUDA" in fp16.message
    # The CPU provider runs the fp16 graph too (slowly): enough to catch a broken conversion.
    ids, mask = encode_padded(sentences)
    ref = torch_energies(model, ids, mask)
    half = run(session(folder, "fp16"), ids, mask)
    assert half.dtype == np.float32
    assert np.abs(half - ref)[mask == 1].max() <= 2e-2 * max(1.0, np.abs(ref[mask == 1]).max())


def test_export_rejects_bad_requests(model, tiny_tokenizer_path, tmp_path):
    with pytest.raises(ValueError, match="variants"):
        export_artifact(model, model.cfg, tiny_tokenizer_path, tmp_path / "a", name="x",
                        variants=("fp8",))
    small = build_tiny_electric(vocab_size=100)
    with pytest.raises(ValueError, match="tokens"):
        export_artifact(small, small.cfg, tiny_tokenizer_path, tmp_path / "b", name="x")
    with pytest.raises(ValueError, match="ModelConfig"):
        export_artifact(model, small.cfg, tiny_tokenizer_path, tmp_path / "c", name="x")


@pytest.mark.parametrize("where", ["metadata", "config.json"])
def test_load_checkpoint_model(model, tiny_tokenizer_path, tmp_path, where):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "final.safetensors"
    config = json.dumps(model.cfg.to_dict())
    if where == "metadata":
        save_file(state, str(path), metadata={"model_config": config,
                                              "tokenizer_path": str(tiny_tokenizer_path)})
    else:
        save_file(state, str(path))  # train.py's layout: config.json, relative tokenizer path
        shutil.copy(tiny_tokenizer_path, tmp_path / "tokenizer.json")
        (tmp_path / "config.json").write_text(json.dumps(
            {"model_config": model.cfg.to_dict(), "train_config": {"steps": 3},
             "tokenizer_path": "tokenizer.json", "training": {"steps": 3}}))
    loaded, cfg, facts = load_checkpoint_model(path)
    assert cfg == model.cfg and not loaded.training
    ids, mask = encode_padded(["the cat sat on the mat", "a dog"])
    np.testing.assert_array_equal(torch_energies(loaded, ids, mask), torch_energies(model, ids, mask))
    if where == "metadata":
        assert facts["tokenizer_path"] == str(tiny_tokenizer_path)
    else:
        assert facts["training"] == {"steps": 3}
        assert facts["tokenizer_path"] == str(tmp_path / "tokenizer.json")

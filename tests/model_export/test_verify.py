"""``electric verify`` against the reference energies an export stores: it passes on a good
artifact, and fails, naming what, on a perturbed variant, a missing or tampered reference, or a
changed tokenizer. Without a checkpoint it runs without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from tiny_models import build_tiny_electric, build_tiny_tokenizer
from tokenizers import normalizers

from electric.cli import main
from model_export.export import VARIANT_FILES, export_artifact
from model_export.reference_set import REFERENCE_SENTENCES
from model_export.verify import verify_artifact
from service.artifact import (
    MANIFEST_NAME,
    ArtifactError,
    load_manifest,
    sha256_file,
    write_manifest,
)
from service.artifact.parity import INT8_MAX_RMS, verify_reference
from service.artifact.reference import (
    REFERENCE_FILE,
    ReferenceSentence,
    load_reference,
    write_reference,
)
from service.engine import OnnxEngine

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "electric-minilm"


@pytest.fixture
def artifact(tiny_artifact: Path, tmp_path: Path) -> Path:
    """A copy of the session's tiny artifact, free to break."""
    return Path(shutil.copytree(tiny_artifact, tmp_path / "tiny-test"))


def scale_initializer(folder: Path, variant: str, factor: float,
                      name: str = "position_embeddings") -> None:
    """Scale one float weight of a variant and re-pin its sha256, so only the maths is wrong."""
    path = folder / VARIANT_FILES[variant]
    model = onnx.load(str(path))
    tensor = next(t for t in model.graph.initializer if name in t.name)
    tensor.CopyFrom(numpy_helper.from_array(
        numpy_helper.to_array(tensor) * np.float32(factor), tensor.name))
    onnx.save(model, str(path))
    manifest = load_manifest(folder)
    spec = manifest.variants[variant].model_copy(update={"sha256": sha256_file(path)})
    write_manifest(folder, manifest.model_copy(
        update={"variants": {**manifest.variants, variant: spec}}))


def test_export_stores_pytorch_energies_and_they_verify(tiny_artifact: Path) -> None:
    manifest = load_manifest(tiny_artifact)
    path = tiny_artifact / REFERENCE_FILE
    assert manifest.reference is not None and manifest.reference.file == REFERENCE_FILE
    assert manifest.reference.sha256 == sha256_file(path)
    assert manifest.reference.sentences == len(REFERENCE_SENTENCES) >= 30
    assert path.stat().st_size < 100_000
    assert "file" not in manifest.public()["reference"]

    # What the PyTorch model computes for each sentence alone (to float32 summation order: an
    # earlier test may have changed torch's thread count).
    model = build_tiny_electric()
    stored = load_reference(tiny_artifact, manifest)
    assert [s.text for s in stored] == REFERENCE_SENTENCES
    for s in stored[:5]:
        ids = torch.tensor([s.ids])
        with torch.no_grad():
            expected = model.energy(ids, torch.ones_like(ids))[0].numpy()
        np.testing.assert_allclose(s.energies, expected, rtol=0, atol=1e-6)

    report = verify_reference(tiny_artifact)
    assert report.passed, report.table()
    assert {c.variant: c.status for c in report.checks} == {
        "tokenizer": "pass", "fp32": "pass", "int8": "pass"}
    assert {c.reference for c in report.checks} == {"stored"}
    assert report.verdict == "PASSED"


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_a_perturbed_variant_fails(artifact: Path, variant: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    scale_initializer(artifact, variant, 2.0)
    load_manifest(artifact)  # the sha256 pins the perturbed file: loading would serve it
    report = verify_reference(artifact)
    assert not report.passed
    status = {c.variant: c.status for c in report.checks}
    other = "int8" if variant == "fp32" else "fp32"
    assert status[variant] == "fail" and status[other] == "pass"
    failed = {c.variant: c for c in report.checks}[variant]
    assert failed.rms is not None and failed.rms > INT8_MAX_RMS
    assert report.verdict.startswith(f"FAILED: {variant} vs stored:")

    assert main(["verify", str(artifact)]) == 1
    err = capsys.readouterr().err
    assert f"FAILED: {variant} vs stored" in err and len(err.strip().splitlines()) == 1


def test_an_artifact_without_reference_serves_but_does_not_verify(
        artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # As exported before the reference existed: no field in the manifest, no file.
    raw = json.loads((artifact / MANIFEST_NAME).read_text())
    del raw["reference"]
    (artifact / MANIFEST_NAME).write_text(json.dumps(raw))
    (artifact / REFERENCE_FILE).unlink()

    manifest = load_manifest(artifact)
    assert manifest.reference is None
    engine = OnnxEngine.load(artifact, manifest, "int8")
    ids = np.array([[2, 30, 31, 3]], dtype=np.int64)
    assert engine.run(ids, np.ones_like(ids)).shape == (1, 4)

    with pytest.raises(ArtifactError, match="no reference energies"):
        verify_reference(artifact)
    assert main(["verify", str(artifact)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no reference energies" in err and "re-export" in err


def test_a_tampered_reference_is_refused(artifact: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = artifact / REFERENCE_FILE
    text = path.read_text()
    start = text.index('"energies":[') + len('"energies":[')
    path.write_text(text[:start] + "0.5," + text[text.index(",", start) + 1:])
    with pytest.raises(ArtifactError, match="sha256"):
        verify_reference(artifact)
    assert main(["verify", str(artifact)]) == 1
    assert "sha256" in capsys.readouterr().err
    path.unlink()
    with pytest.raises(ArtifactError, match="lacks the file"):
        verify_reference(artifact)


def test_a_changed_tokenizer_fails(artifact: Path) -> None:
    cased = build_tiny_tokenizer()
    cased.normalizer = normalizers.BertNormalizer(lowercase=False)
    cased.save(str(artifact / "tokenizer.json"))
    report = verify_reference(artifact)
    assert not report.passed
    status = {c.variant: c.status for c in report.checks}
    assert status == {"tokenizer": "fail", "fp32": "pass", "int8": "pass"}
    assert "encode differently" in report.verdict


def test_a_live_checkpoint_adds_its_own_rows(tiny_artifact: Path) -> None:
    report = verify_artifact(tiny_artifact, build_tiny_electric(), REFERENCE_SENTENCES[:6])
    assert report.passed, report.table()
    assert report.references == {"stored": len(REFERENCE_SENTENCES), "pytorch": 6}
    assert [(c.variant, c.reference) for c in report.checks] == [
        ("tokenizer", "stored"), ("fp32", "stored"), ("int8", "stored"),
        ("fp32", "pytorch"), ("int8", "pytorch")]
    with pytest.raises(ValueError, match="live model"):
        verify_artifact(tiny_artifact, None, REFERENCE_SENTENCES[:6])


def test_verify_without_checkpoint_needs_no_torch(tiny_artifact: Path) -> None:
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises
            "from electric.cli import main\n"
            f"sys.exit(main(['verify', {str(tiny_artifact)!r}]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("PASSED")


def test_hf_import_stores_a_reference(tiny_tokenizer_path: Path, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.ElectraConfig(vocab_size=214, embedding_size=16, hidden_size=32,
                                        num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    folder = tmp_path / "electra"
    transformers.ElectraForPreTraining(config).save_pretrained(folder, safe_serialization=True)
    shutil.copy(tiny_tokenizer_path, folder / "tokenizer.json")
    out = tmp_path / "imported"
    assert main(["import", str(folder), "--out", str(out), "--variants", "fp32"]) == 0
    assert load_manifest(out).reference is not None
    assert verify_reference(out).passed


def test_export_overwrites_an_earlier_reference(tiny_tokenizer_path: Path,
                                                tmp_path: Path) -> None:
    folder = tmp_path / "again"
    for seed in (0, 1):
        model = build_tiny_electric(seed=seed)
        export_artifact(model, model.cfg, tiny_tokenizer_path, folder, name="again",
                        variants=("fp32",))
    assert verify_reference(folder).passed
    assert not verify_artifact(folder, build_tiny_electric(seed=0)).passed


def test_the_shipped_model_verifies_or_says_why_not(capsys: pytest.CaptureFixture[str]) -> None:
    if not (SHIPPED / MANIFEST_NAME).is_file():
        pytest.skip("no embedded model in this checkout")
    code = main(["verify", str(SHIPPED)])
    out, err = capsys.readouterr()
    if load_manifest(SHIPPED).reference is None:  # exported by an early build
        assert code == 1 and "no reference energies" in err and "re-export" in err
    else:
        assert code == 0, out + err


def test_the_file_reads_back_the_same_float32(tiny_artifact: Path, tmp_path: Path) -> None:
    energies = np.random.default_rng(0).normal(scale=30, size=50).astype(np.float32)
    spec = write_reference(tmp_path, [ReferenceSentence("x", tuple(range(50)), energies)],
                           computed_by="test")
    manifest = load_manifest(tiny_artifact).model_copy(update={"reference": spec})
    (back,) = load_reference(tmp_path, manifest)
    np.testing.assert_array_equal(back.energies, energies)
    assert back.ids == tuple(range(50))

"""The ONNX Runtime engine on the tiny exported artifact, and variant choice."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from service.artifact import ArtifactError, load_manifest
from service.engine import OnnxEngine, choose_variant, cpu_budget, cpu_runs, warm_up
from service.providers import CPU, CUDA, PROVIDERS, provider_of


@pytest.mark.parametrize("requested, available, on_gpu, expected", [
    ("auto", {"fp32", "fp16", "int8"}, True, "fp16"),
    ("auto", {"fp32", "int8"}, True, "fp32"),
    ("auto", {"int8"}, True, "int8"),
    ("auto", {"fp32", "fp16", "int8"}, False, "int8"),
    ("auto", {"fp32", "fp16"}, False, "fp32"),
    ("auto", {"fp16"}, False, "fp16"),
    ("fp32", {"fp32", "int8"}, False, "fp32"),
])
def test_choose_variant(requested: str, available: set[str], on_gpu: bool,
                        expected: str) -> None:
    provider = PROVIDERS[CUDA if on_gpu else CPU]
    assert choose_variant(requested, available, provider) == expected  # type: ignore[arg-type]


def test_a_missing_variant_is_a_clear_error() -> None:
    with pytest.raises(ArtifactError, match="fp16.*int8"):
        choose_variant("fp16", {"int8"}, PROVIDERS[CPU])


def test_engine_runs_on_cpu_and_reports_providers(tiny_artifact: Path) -> None:
    manifest = load_manifest(tiny_artifact)
    engine = OnnxEngine.load(tiny_artifact, manifest, "fp32", intra_op_threads=1)
    assert engine.variant == "fp32" and engine.providers[0] == CPU
    ids = np.array([[2, 40, 41, 3, 0], [2, 42, 43, 44, 3]], dtype=np.int64)
    energies = engine.run(ids, (np.arange(5) < np.array([[4], [5]])).astype(np.int64))
    assert energies.shape == (2, 5) and energies.dtype == np.float32
    assert np.isfinite(energies).all()
    warm_up(engine, pad_id=0, max_length=manifest.architecture.max_positions,
            max_batch_tokens=256)


def test_a_corrupted_model_file_is_refused(tiny_artifact: Path, tmp_path: Path) -> None:
    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_artifact, folder)
    manifest = json.loads((folder / "electric.json").read_text())
    model_file = folder / manifest["variants"]["fp32"]["file"]
    model_file.write_bytes(model_file.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="sha256"):
        OnnxEngine.load(folder, load_manifest(folder), "fp32")


def _cgroup(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max)
    return tmp_path


def test_cpu_budget_reads_a_container_quota(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert cpu_budget(_cgroup(tmp_path, "250000 100000\n")) == 3  # 2.5 CPUs round up
    assert cpu_budget(_cgroup(tmp_path, "max 100000\n")) is None  # no limit: ORT decides
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert cpu_budget(_cgroup(tmp_path, "max 100000\n")) == 2  # pinned by taskset/cpuset


def test_cpu_budget_reads_cgroup_v1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_budget(tmp_path) == 4
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpu_budget(tmp_path) is None


@pytest.mark.parametrize(("cores", "parallel", "threads", "want"), [
    (2, 0, 0, (2, 1)),    # both open: one single-threaded batch per core
    (16, 0, 0, (4, 4)),   # at most MAX_AUTO_RUNS batches, the cores shared among them
    (1, 0, 0, (1, 1)),
    (2, 0, 2, (1, 2)),    # threads given: the batches that fill the cores
    (8, 2, 0, (2, 4)),    # batches given: the threads that fill the cores
    (8, 3, 5, (3, 5)),    # both given: as given, even past the cores
])
def test_cpu_runs_share_out_the_cores(monkeypatch: pytest.MonkeyPatch, cores: int,
                                      parallel: int, threads: int,
                                      want: tuple[int, int]) -> None:
    monkeypatch.setattr("service.engine.cpu_budget", lambda: cores)
    assert cpu_runs(parallel, threads) == want


def test_parallel_runs_score_as_one_run_does(tiny_artifact: Path) -> None:
    """Two batches at once on one session give the rows one batch at a time gives."""
    manifest = load_manifest(tiny_artifact)
    one = OnnxEngine.load(tiny_artifact, manifest, "fp32", intra_op_threads=1)
    two = OnnxEngine.load(tiny_artifact, manifest, "fp32", intra_op_threads=1,
                          parallel_batches=2)
    assert (one.parallel_runs, two.parallel_runs) == (1, 2)
    assert two.intra_op_threads == 1
    rng = np.random.default_rng(0)
    batches = []
    for size, length in ((3, 9), (5, 6), (2, 12), (4, 7)):
        ids = rng.integers(5, 90, (size, length)).astype(np.int64)
        ids[:, 0], ids[:, -1] = 2, 3
        batches.append((ids, np.ones_like(ids)))
    alone = [one.run(ids, mask) for ids, mask in batches]
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(lambda b: two.run(*b), batches * 3))
    for got, want in zip(together, alone * 3):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_every_provider_row_is_whole() -> None:
    for name, row in PROVIDERS.items():
        assert row.name == name and set(row.variants) == {"fp32", "fp16", "int8"}
        assert row.max_batch_tokens > 0 and 0 <= row.max_padding <= 1
    assert PROVIDERS[CPU].bind_output_to is None and PROVIDERS[CUDA].bind_output_to == "cuda"
    assert provider_of("FakeExecutionProvider") is PROVIDERS[CPU]  # batches as on a CPU
    assert provider_of(None) is PROVIDERS[CPU]

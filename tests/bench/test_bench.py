"""The benchmarks' plumbing (not their speed): they run end to end on the tiny preset and
their helpers compute what they claim. No timing is asserted anywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.gpu import peak_for
from bench.machine import REPOSITORY, encoder_flops_per_token, recorded_path, recorded_tree
from bench.pll import masked_copies
from electric.cli import main


def test_masked_copies_masks_each_word_once() -> None:
    ids = np.array([[2, 10, 11, 12, 3], [2, 20, 21, 22, 3]])
    feeds = masked_copies(ids, mask_id=4)
    assert feeds["input_ids"].shape == (6, 5)
    assert feeds["positions"].tolist() == [1, 2, 3, 1, 2, 3]
    assert feeds["targets"].tolist() == [10, 11, 12, 20, 21, 22]
    for row, pos in zip(feeds["input_ids"], feeds["positions"], strict=True):
        assert row[pos] == 4 and (row == 4).sum() == 1
    assert ids[0, 1] == 10  # the input is left alone


def test_flops_per_token_matches_a_hand_count() -> None:
    # 1 layer, H=2, I=4, T=3: 8*4 + 4*2*4 + 4*3*2 = 88, head 2*4 + 2*2 = 12.
    assert encoder_flops_per_token(1, 2, 4, 3) == 100


def test_results_record_paths_relative_to_the_repository(tmp_path: Path) -> None:
    assert recorded_path(REPOSITORY / "models" / "electric-minilm") == "models/electric-minilm"
    corpus = REPOSITORY.parent / "shared" / "corpora" / "brown.txt.gz"
    assert recorded_path(corpus) == "../shared/corpora/brown.txt.gz"
    assert recorded_tree(REPOSITORY) == "."
    assert not recorded_tree(tmp_path).startswith("/")  # not a checkout: its relative path


def test_gpu_peak_lookup_tells_h100_variants_apart() -> None:
    assert peak_for("NVIDIA H100 80GB HBM3") == pytest.approx(989.4e12)
    assert peak_for("NVIDIA H100 PCIe") == pytest.approx(756.5e12)
    assert peak_for("NVIDIA H200") == pytest.approx(989.4e12)
    assert peak_for("Some Other Card") is None


def test_bench_engine_and_pll_run_from_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    assert main(["bench", "engine", "--preset", "tiny", "--batches", "1,2", "--lengths", "8",
                 "--min-time", "0", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    runtimes = {c["runtime"] for c in result["cells"]}
    assert runtimes == {"pytorch-fp32", "ort-fp32-raw", "ort-fp32-fused", "ort-int8",
                        "ort-int8-rowwise"}
    assert all(c["tokens_per_s"] > 0 for c in result["cells"])

    out = tmp_path / "pll.json"
    assert main(["bench", "pll", "--preset", "tiny", "--words", "6", "--min-time", "0",
                 "--threads", "1", "--json", str(out)]) == 0
    pll = json.loads(out.read_text())
    assert set(pll["speedup"]) == {"fp32", "int8"}
    assert pll["fused_ops"]["pll"].get("Attention") == 2  # the MLM graph fused like Electric's

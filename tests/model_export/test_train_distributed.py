"""Data-parallel training on CPU (gloo, two ranks): one model, the one-process update, exact
resume, and rank 0 alone writing the run's files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_train import records, templated_corpus
from torch.multiprocessing.spawn import spawn

from model_export.config import preset
from model_export.train import Trainer, train

ROOT = Path(__file__).resolve().parents[2]
# Checkpoints at 5 and 10, windows of 3 steps, both phases: the resume test crosses all three.
SETTINGS: dict[str, Any] = {"steps": 10, "noise_pretrain_steps": 4, "log_every": 3,
                            "eval_every": 4, "ckpt_every": 5}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return templated_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank(rank: int, world: int, port: int, corpus: Path, run_dir: Path, tokenizer: Path,
          crash_at: int | None) -> None:
    """One rank, with the environment torchrun would give it."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    if crash_at is not None:
        step = Trainer.step

        def crashing(self: Trainer, i: int) -> Any:
            if i == crash_at:
                raise KeyboardInterrupt
            return step(self, i)

        Trainer.step = crashing  # type: ignore[method-assign,assignment]
    try:
        train(preset("tiny", **SETTINGS), [corpus], run_dir, tokenizer)
    except KeyboardInterrupt:
        pass


def spawn_run(corpus: Path, run_dir: Path, tokenizer: Path, crash_at: int | None = None) -> None:
    spawn(_rank, args=(2, free_port(), corpus, run_dir, tokenizer, crash_at),  # type: ignore[no-untyped-call]
          nprocs=2)


def strip(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]


def test_two_ranks_resume_exactly(corpus: Path, tiny_tokenizer_path: Path,
                                  tmp_path: Path) -> None:
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    spawn_run(corpus, whole, tiny_tokenizer_path)
    spawn_run(corpus, broken, tiny_tokenizer_path, crash_at=8)
    assert max(r["step"] for r in records(broken)) == 8  # lines past the checkpoint at 5
    assert not (broken / "final.safetensors").exists()
    spawn_run(corpus, broken, tiny_tokenizer_path)

    assert strip(records(broken)) == strip(records(whole))
    assert {r["phase"] for r in records(whole) if "phase" in r} == {"noise_pretrain", "joint"}
    a, b = load_file(whole / "final.safetensors"), load_file(broken / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # Both ranks' RNG streams are in the checkpoint, and the replicas ended equal.
    ckpt = load_file(whole / "checkpoint.safetensors")
    assert {"rng.torch", "rng.generator", "rng.1.torch", "rng.1.generator"} <= set(ckpt)
    assert not torch.equal(ckpt["rng.generator"], ckpt["rng.1.generator"])
    training = json.loads((whole / "config.json").read_text())["training"]
    assert training["world_size"] == 2 and training["replica_max_abs_diff"] == 0.0


def test_torchrun_cli_matches_one_process(corpus: Path, tiny_tokenizer_path: Path,
                                          tmp_path: Path) -> None:
    """`torchrun -m electric train` trains one model on the global batches of a 1-process run."""
    two, one = tmp_path / "two", tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "electric", "train", "--preset", "tiny", "--corpora", str(corpus),
         "--tokenizer", str(tiny_tokenizer_path), "--run-dir", str(two), "--set", "steps=30"],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("final checkpoint:") == 1  # rank 0 alone reports
    train(preset("tiny", steps=30), [corpus], one, tiny_tokenizer_path)

    rows_two, rows_one = records(two), records(one)
    assert all(r["world_size"] == 2 for r in rows_two)
    assert all(r["world_size"] == 1 for r in rows_one)
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one]
    # Same global batches (the tokens counted agree), held-out figures from the same start.
    assert [r.get("tokens_seen") for r in rows_two] == [r.get("tokens_seen") for r in rows_one]
    assert rows_two[0] == rows_one[0] | {"world_size": 2}
    # The noise draws differ per rank, so the losses agree closely but not exactly.
    loss_two = [r["loss"] for r in rows_two if "loss" in r]
    loss_one = [r["loss"] for r in rows_one if "loss" in r]
    assert abs(loss_two[0] - loss_one[0]) / loss_one[0] < 0.02
    assert all(abs(a - b) / b < 0.15 for a, b in zip(loss_two, loss_one))
    assert loss_two[-1] < loss_two[0]
    training = json.loads((two / "config.json").read_text())["training"]
    assert training["world_size"] == 2 and training["replica_max_abs_diff"] == 0.0

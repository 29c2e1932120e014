"""The GPU-device path on CPU: time budget, portable warm start, pieces both ways, the import chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_train import templated_corpus
from tiny_models import build_tiny_electric

from model_export.checkpoint import load_checkpoint_model
from model_export.config import preset
from model_export.device_pieces import (
    INDEX,
    join_pieces,
    join_run,
    pack_upload,
    split_files,
    split_run,
    write_portable_warm_start,
)
from model_export.model import Electric
from model_export.shard import build_shard
from model_export.train import train
from model_export.warmstart import config_from_bert, load_bert_encoder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return templated_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt", documents=120)


def bert_folder(folder: Path, tokenizer: Path) -> Path:
    """A BERT-format folder (HF names, config.json, tokenizer.json) from a tiny random Electric."""
    model = build_tiny_electric()
    folder.mkdir(parents=True)
    tensors = {f"bert.{k}": v.contiguous() for k, v in model.energy.state_dict().items()
               if k.startswith(("embeddings.", "encoder."))}
    tensors["bert.pooler.dense.weight"] = torch.zeros(32, 32)  # a part Electric does not use
    save_file(tensors, str(folder / "model.safetensors"))
    cfg = model.cfg
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.intermediate, "max_position_embeddings": cfg.max_positions,
        "hidden_act": "gelu", "pad_token_id": 0}))
    (folder / "tokenizer.json").write_bytes(tokenizer.read_bytes())
    return folder


def test_max_minutes_stops_early_and_writes_a_final_that_loads(
        corpus: Path, tiny_tokenizer_path: Path, tmp_path: Path) -> None:
    cfg = preset("tiny", steps=1_000_000, max_minutes=0.02, eval_every=0, ckpt_every=100_000)
    final = train(cfg, [corpus], tmp_path, tiny_tokenizer_path)
    facts = json.loads((tmp_path / "config.json").read_text())["training"]
    stop = facts["stopped_early"]
    assert 0 < stop["step"] < 1_000_000 and stop["max_minutes"] == 0.02
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == stop["step"] and "heldout_noise_ce" in records[-1]
    model, _, _ = load_checkpoint_model(final)
    weights = load_file(final)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="max_minutes -1"):
        preset("tiny", max_minutes=-1)


def test_portable_warm_start_round_trip(tiny_tokenizer_path: Path, tmp_path: Path) -> None:
    source = bert_folder(tmp_path / "bert", tiny_tokenizer_path)
    out = write_portable_warm_start(source, tmp_path / "portable")
    saved = load_file(out / "model.safetensors")
    assert "bert.pooler.dense.weight" not in saved
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    model = Electric(config_from_bert(out))
    report = load_bert_encoder(model, out)
    assert not report["missing"] and not report["unexpected"]
    original = load_file(source / "model.safetensors")
    got = model.energy.state_dict()["encoder.layer.0.attention.self.query.weight"]
    want = original["bert.encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(got, want.to(torch.bfloat16).float()) and not torch.equal(got, want)


def test_split_and_join_files_check_every_hash(tmp_path: Path) -> None:
    root = tmp_path / "files"
    (root / "sub").mkdir(parents=True)
    blobs = {"a.bin": os.urandom(2500), "sub/b.bin": os.urandom(10), "c.bin": b""}
    for name, data in blobs.items():
        (root / name).write_bytes(data)
    index = split_files(root, list(blobs), tmp_path / "pieces", piece_bytes=1000)
    assert [p["bytes"] for p in index["pieces"]] == [1000, 1000, 510]
    written = join_pieces(tmp_path / "pieces", tmp_path / "joined")
    assert {p.relative_to(tmp_path / "joined").as_posix(): p.read_bytes() for p in written} == blobs
    piece = tmp_path / "pieces" / index["pieces"][1]["name"]
    piece.write_bytes(piece.read_bytes()[:-1] + b"\0")
    with pytest.raises(ValueError, match="index.json says"):
        join_pieces(tmp_path / "pieces", tmp_path / "again")
    piece.unlink()
    with pytest.raises(FileNotFoundError, match="lacks pieces"):
        join_pieces(tmp_path / "pieces", tmp_path / "again")


def test_pack_upload_spreads_pieces_over_calls(tmp_path: Path) -> None:
    big, small = tmp_path / "big.bin", tmp_path / "small.json"
    big.write_bytes(os.urandom(3 * 2**20 + 5))
    small.write_text("{}")
    calls = pack_upload({"warm/big.bin": big, "shard.json": small}, tmp_path / "up", 2 * 2**20)
    assert [c.name for c in calls] == ["call1", "call2", "call3", "call4"]  # 1 MiB pieces
    assert all(sum(p.stat().st_size for p in c.iterdir()) <= 2 * 2**20 for c in calls)
    staged = tmp_path / "staged"  # what scripts/device_train.sh does on the device
    staged.mkdir()
    for call in calls:
        for p in call.iterdir():
            (staged / p.name).write_bytes(p.read_bytes())
    join_pieces(staged, tmp_path / "in")
    assert (tmp_path / "in" / "warm" / "big.bin").read_bytes() == big.read_bytes()


def test_split_run_join_run_and_export(corpus: Path, tiny_tokenizer_path: Path,
                                       tmp_path: Path) -> None:
    final = train(preset("tiny", steps=2, eval_every=0), [corpus], tmp_path / "run",
                  tiny_tokenizer_path)
    index = split_run(tmp_path / "run", tmp_path / "out")
    assert {f["name"] for f in index["files"]} >= {"final.safetensors", "config.json",
                                                  "tokenizer.json", "metrics.jsonl"}
    assert len(list((tmp_path / "out").iterdir())) <= 8
    joined = join_run(tmp_path / "out", tmp_path / "back")
    _, _, facts = load_checkpoint_model(joined)
    assert facts["training"]["transport_dtype"] == "bfloat16"
    trained = load_file(final)
    back = load_file(joined)
    assert all(back[k].dtype == torch.float32 and
               torch.equal(back[k], trained[k].to(torch.bfloat16).float()) for k in trained)
    from electric.cli import main

    assert main(["export", str(joined), "--out", str(tmp_path / "artifact"),
                 "--variants", "fp32"]) == 0
    manifest = json.loads((tmp_path / "artifact" / "electric.json").read_text())
    assert manifest["training"]["transport_dtype"] == "bfloat16"


# Run in a fresh interpreter where the serving packages cannot be imported, as on the device.
BLOCKED_RUN = """
import importlib.abc, sys
BLOCKED = ("fastapi", "pydantic", "pydantic_settings", "prometheus_client", "uvicorn",
           "starlette", "service")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the device image lacks it")
sys.meta_path.insert(0, Block())
from model_export.device_train import main
code = main(sys.argv[1:])
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
sys.exit(code)
"""


def test_device_train_runs_without_the_serving_packages(
        corpus: Path, tiny_tokenizer_path: Path, tmp_path: Path) -> None:
    warm = bert_folder(tmp_path / "bert", tiny_tokenizer_path)
    portable = write_portable_warm_start(warm, tmp_path / "warm")
    cfg = preset("tiny", warm_start=str(portable))
    build_shard(cfg, [corpus], portable / "tokenizer.json", tmp_path / "shard.npz")
    files = {f"warm/{n}": portable / n for n in ("config.json", "tokenizer.json",
                                                 "model.safetensors")}
    files.update({"shard.npz": tmp_path / "shard.npz", "shard.json": tmp_path / "shard.json"})
    (call,) = pack_upload(files, tmp_path / "up", 32 * 2**20)
    out = tmp_path / "OUT"
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, "--upload", str(call), "--work",
         str(tmp_path / "work"), "--out", str(out), "--preset", "tiny", "--minutes", "0.05",
         "--probe-steps", "3", "--set", "eval_every=0", "--set", "threads=1"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=180, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "device.json").read_text())
    assert summary["probe"]["steps_per_s"] > 0
    assert summary["train_config"]["steps"] + summary["train_config"]["noise_pretrain_steps"] >= 2
    assert (out / INDEX).is_file() and len(list(out.iterdir())) <= 8
    _, _, facts = load_checkpoint_model(join_run(out, tmp_path / "back"))
    assert facts["training"]["warm_start"] == "warm" and facts["training"]["tokens_seen"] > 0

"""Training shards: the same packed sequences and batches as the corpora, capped by a weighted sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import templated_corpus

from model_export.config import preset
from model_export.data import BatchStream, SpecialIds, load_tokenizer
from model_export.shard import build_shard, load_shard
from model_export.train import train, training_data

MIX = "big=0.5,small=3"


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("corpora")
    return [templated_corpus(folder / "big.txt", documents=300, seed=1),
            templated_corpus(folder / "small.txt", documents=40, seed=2)]


def cfg(**overrides):
    return preset("tiny", corpus_weights=MIX, heldout_fraction=0.1, **overrides)


def test_batches_from_the_shard_equal_batches_from_the_corpora(
        corpora: list[Path], tiny_tokenizer_path: Path, tmp_path: Path) -> None:
    c = cfg()
    meta = build_shard(c, corpora, tiny_tokenizer_path, tmp_path / "shard.npz")
    assert meta["sample"] is None and meta["weights"] == [0.5, 3.0]
    assert [x["name"] for x in meta["corpora"]] == ["big.txt", "small.txt"]
    shard = load_shard(tmp_path / "shard.npz")
    direct, weights, names, _ = training_data(c, corpora, None, tmp_path / "run", tiny_tokenizer_path)
    assert (weights, names) == (shard.weights, shard.corpora)
    special = SpecialIds.from_tokenizer(load_tokenizer(tiny_tokenizer_path))
    a = BatchStream(direct.subset(False), special, 8, seed=3, weights=weights)
    b = BatchStream(shard.sequences.subset(False), special, 8, seed=3, weights=shard.weights)
    assert a.batches_per_epoch == b.batches_per_epoch
    for step in range(2 * a.batches_per_epoch + 1):  # across an epoch boundary
        x, y = a.batch(step), b.batch(step)
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.special_mask, y.special_mask)
    held_a, held_b = direct.subset(True), shard.sequences.subset(True)
    assert len(held_a) == len(held_b) > 0
    assert all(np.array_equal(held_a.sequence(i, special), held_b.sequence(i, special))
               for i in range(len(held_a)))
    assert meta["tokens"]["train"] + meta["tokens"]["heldout"] == int(
        (direct.ends - direct.starts).sum())


def test_training_on_the_shard_matches_training_on_the_corpora(
        corpora: list[Path], tiny_tokenizer_path: Path, tmp_path: Path) -> None:
    c = cfg(steps=6, eval_every=0, ckpt_every=6, log_every=3)
    build_shard(c, corpora, tiny_tokenizer_path, tmp_path / "shard.npz")
    from_corpora = train(c, corpora, tmp_path / "a", tiny_tokenizer_path)
    from_shard = train(c, [], tmp_path / "b", tiny_tokenizer_path, shard=tmp_path / "shard.npz")
    wa, wb = load_file(from_corpora), load_file(from_shard)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    facts = json.loads((tmp_path / "b" / "config.json").read_text())["training"]
    assert facts["corpora"] == ["big.txt", "small.txt"] and facts["shard"]["file"] == "shard.npz"


def test_a_capped_shard_keeps_small_corpora_and_the_epoch_mix(
        corpora: list[Path], tiny_tokenizer_path: Path, tmp_path: Path) -> None:
    c = cfg()
    full = build_shard(c, corpora, tiny_tokenizer_path, tmp_path / "full.npz")
    cap = full["tokens"]["heldout"] + full["tokens"]["train"] // 3
    meta = build_shard(c, corpora, tiny_tokenizer_path, tmp_path / "cap.npz", max_tokens=cap)
    assert meta["tokens"]["train"] + meta["tokens"]["heldout"] <= cap
    assert meta["sequences"]["heldout"] == full["sequences"]["heldout"]
    whole, part = load_shard(tmp_path / "full.npz").sequences, load_shard(tmp_path / "cap.npz")
    train_whole, train_part = whole.subset(False), part.sequences.subset(False)
    n_whole = np.bincount(train_whole.source, minlength=2)
    n_part = np.bincount(train_part.source, minlength=2)
    assert n_part[1] == n_whole[1]  # weight 3: kept whole
    assert 0 < n_part[0] < n_whole[0]  # weight 0.5: sampled
    # Sequences per weighted epoch, per corpus, as from the full shard.
    assert np.allclose(np.array(part.weights) * n_part, [0.5 * n_whole[0], 3 * n_whole[1]])
    again = build_shard(c, corpora, tiny_tokenizer_path, tmp_path / "again.npz", max_tokens=cap)
    assert again["npz_sha256"] == meta["npz_sha256"]  # deterministic


def test_a_run_with_other_settings_or_a_changed_file_is_refused(
        corpora: list[Path], tiny_tokenizer_path: Path, tmp_path: Path) -> None:
    build_shard(cfg(), corpora, tiny_tokenizer_path, tmp_path / "shard.npz")
    with pytest.raises(ValueError, match="max_len 24 .shard: 32.*corpus_weights"):
        train(preset("tiny", max_len=24, heldout_fraction=0.1), [], tmp_path / "r",
              tiny_tokenizer_path, shard=tmp_path / "shard.npz")
    with pytest.raises(ValueError, match="corpora or a shard"):
        train(cfg(), corpora, tmp_path / "r", tiny_tokenizer_path, shard=tmp_path / "shard.npz")
    data = bytearray((tmp_path / "shard.npz").read_bytes())
    data[-10] ^= 1
    (tmp_path / "shard.npz").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the sha256"):
        load_shard(tmp_path / "shard.npz")


def test_train_shard_and_train_from_it_on_the_command_line(
        corpora: list[Path], tiny_tokenizer_path: Path, tmp_path: Path, capsys) -> None:
    from electric.cli import main

    shard = tmp_path / "s.npz"
    assert main(["train-shard", "--preset", "tiny", "--corpora", *map(str, corpora),
                 "--out", str(shard), "--tokenizer", str(tiny_tokenizer_path)]) == 0
    assert "training and" in capsys.readouterr().out and (tmp_path / "s.json").is_file()
    assert main(["train", "--preset", "tiny", "--shard", str(shard), "--run-dir",
                 str(tmp_path / "run"), "--tokenizer", str(tiny_tokenizer_path),
                 "--set", "steps=2", "--set", "eval_every=0"]) == 0
    assert (tmp_path / "run" / "final.safetensors").is_file()
    with pytest.raises(SystemExit):
        main(["train-shard", "--preset", "tiny", "--corpora", str(corpora[0]), "--out",
              str(shard), "--tokenizer", str(tiny_tokenizer_path), "--max-tokens", "-1"])

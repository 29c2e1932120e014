"""The training checkpoint's seam: RunState's JSON form and a save / load round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_train import templated_corpus

from model_export.checkpoint import RunState, load_checkpoint, save_checkpoint
from model_export.config import preset
from model_export.data import BatchStream, SpecialIds, load_tokenizer, pack, tokenize_corpora
from model_export.nce import TwoTowerNoise
from model_export.train import Trainer, build_model


def test_run_state_json_keeps_the_layout_of_earlier_checkpoints() -> None:
    state = RunState(train_config={"name": "tiny"}, baselines=None, warm_start=None)
    # The dict that train.py wrote before RunState existed: same keys, same order.
    assert list(state.to_dict()) == ["step", "tokens_seen", "sequences_seen", "wall_time_s",
                                     "window", "train_config", "baselines", "warm_start", "last"]
    state.stopped_early = {"step": 3}
    assert state.to_dict()["stopped_early"] == {"step": 3} and "init_from" not in state.to_dict()
    assert RunState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    with pytest.raises(ValueError, match=r"unknown RunState keys \['stepz'\]"):
        RunState.from_dict({**state.to_dict(), "stepz": 1})


def test_save_and_load_restore_weights_optimizer_and_rng(tiny_tokenizer_path: Path,
                                                         tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_tokenizer_path)
    special = SpecialIds.from_tokenizer(tok)
    corpus = templated_corpus(tmp_path / "corpus.txt", documents=40)
    cfg = preset("tiny")
    stream = BatchStream(pack(tokenize_corpora([corpus], tok, 0.0), cfg.max_len), special,
                         cfg.batch_size, cfg.seed)

    def trainer() -> Trainer:
        model, _ = build_model(cfg, tok.get_vocab_size())
        return Trainer(cfg, model, TwoTowerNoise(model), stream, torch.device("cpu"))

    first = trainer()
    first.step(0)
    state = RunState(step=1, tokens_seen=7, window={"n": 1, "loss": 2.5},
                     train_config=cfg.to_dict(), baselines={"unigram": 5.0}, warm_start=None)
    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, first, state)
    with safe_open(str(path), framework="pt") as f:
        assert "scaler" in json.loads(f.metadata()["state"])
    terms_a, _ = first.step(1)

    second = trainer()
    torch.manual_seed(123)  # RNG state that load_checkpoint must replace
    assert load_checkpoint(path, second) == state
    # Weights, AdamW moments and both RNG streams restored: step 1 repeats bit for bit.
    terms_b, _ = second.step(1)
    assert terms_a == terms_b
    a, b = first.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

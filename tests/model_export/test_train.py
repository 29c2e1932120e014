"""The training loop on the tiny preset: it learns, resumes exactly, and writes what export reads."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model_export.config import TRAIN_PRESETS, TrainConfig, preset
from model_export.data import BatchStream, SpecialIds, load_tokenizer, pack, tokenize_corpora
from model_export.nce import TwoTowerNoise
from model_export.schedule import lr_factor, make_optimizer
from model_export.shard import corpus_weights
from model_export.train import Trainer, build_model, train

ADJ = ["big", "small", "old", "new", "red", "good", "bad"]
NOUN = ["cat", "dog", "bird", "man", "woman", "child", "house", "tree", "car", "book"]
VERB = ["sat", "ran", "went"]
PREP = ["on", "in", "at", "to"]


def templated_corpus(path: Path, documents: int = 300, seed: int = 0) -> Path:
    """Sentences from one template: structure a tiny model can pick up in a few dozen steps."""
    rng = random.Random(seed)
    lines = []
    for _ in range(documents):
        for _ in range(rng.randint(1, 4)):
            lines.append(f"the {rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(VERB)} "
                         f"{rng.choice(PREP)} the {rng.choice(NOUN)} .")
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return templated_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_training_learns_and_writes_the_export_files(corpus: Path, tiny_tokenizer_path: Path,
                                                          tmp_path: Path) -> None:
    cfg = preset("tiny", steps=40, log_every=10, eval_every=20, ckpt_every=40)
    final = train(cfg, [corpus], tmp_path, tiny_tokenizer_path)
    logs = records(tmp_path)
    steps = [r for r in logs if "loss" in r]
    evals = [r for r in logs if "heldout_noise_ce" in r]
    assert [r["step"] for r in steps] == [10, 20, 30, 40]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert steps[-1]["nce_loss"] < steps[0]["nce_loss"]
    assert steps[-1]["mle_loss"] < steps[0]["mle_loss"]
    assert [r["step"] for r in evals] == [0, 20, 40]
    assert evals[-1]["heldout_noise_ce"] < evals[0]["heldout_noise_ce"]
    assert evals[0]["heldout_bigram_ce"] < evals[0]["heldout_unigram_ce"]
    assert all(r["tokens_per_s"] > 0 for r in steps)

    assert final == tmp_path / "final.safetensors"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tokenizer_path"] == "tokenizer.json" and (tmp_path / "tokenizer.json").exists()
    assert config["training"]["steps"] == 40 and config["training"]["tokens_seen"] > 0
    assert set(config["training"]["final"]) >= {"loss", "nce_loss", "heldout_noise_ce"}
    # The exporter's loader rebuilds the same model from these files.
    from model_export.checkpoint import load_checkpoint_model

    model, mcfg, facts = load_checkpoint_model(final)
    assert mcfg.vocab_size == load_tokenizer(tiny_tokenizer_path).get_vocab_size()
    assert Path(facts["tokenizer_path"]) == tmp_path / "tokenizer.json"
    weights = load_file(final)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_interrupted_run_resumes_exactly(corpus: Path, tiny_tokenizer_path: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Both phases, dropout on, checkpoints at 5 and 10 while the log windows are 3 steps long.
    cfg = preset("tiny", steps=10, noise_pretrain_steps=4, log_every=3, eval_every=4,
                 ckpt_every=5)
    whole = tmp_path / "whole"
    train(cfg, [corpus], whole, tiny_tokenizer_path)

    broken = tmp_path / "broken"
    step = Trainer.step

    def crash_at_8(self: Trainer, i: int):
        if i == 8:
            raise KeyboardInterrupt
        return step(self, i)

    monkeypatch.setattr(Trainer, "step", crash_at_8)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, [corpus], broken, tiny_tokenizer_path)
    assert max(r["step"] for r in records(broken)) == 8  # lines past the checkpoint at 5
    monkeypatch.setattr(Trainer, "step", step)
    train(cfg, [corpus], broken, tiny_tokenizer_path)

    def strip(rows: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in rows]

    assert strip(records(broken)) == strip(records(whole))
    assert {r["phase"] for r in records(whole) if "phase" in r} == {"noise_pretrain", "joint"}
    a, b = load_file(whole / "final.safetensors"), load_file(broken / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_different_settings(corpus: Path, tiny_tokenizer_path: Path,
                                           tmp_path: Path) -> None:
    cfg = preset("tiny", steps=2, eval_every=0, ckpt_every=1)
    train(cfg, [corpus], tmp_path, tiny_tokenizer_path)
    with pytest.raises(ValueError, match="lr"):
        train(dataclasses.replace(cfg, lr=0.5), [corpus], tmp_path, tiny_tokenizer_path)
    train(dataclasses.replace(cfg, steps=3), [corpus], tmp_path, tiny_tokenizer_path)  # extend
    assert max(r["step"] for r in records(tmp_path)) == 3


def test_init_from_continues_a_finished_run(corpus: Path, tiny_tokenizer_path: Path,
                                            tmp_path: Path) -> None:
    first = train(preset("tiny", steps=4, eval_every=0), [corpus], tmp_path / "a",
                  tiny_tokenizer_path)
    # lr 0: the continuation must hold exactly the weights it started from, noise towers too.
    cfg = preset("tiny", init_from=str(tmp_path / "a"), steps=2, lr=0.0, fresh_lr=0.0,
                 eval_every=0, plain_fraction=0.5)
    assert cfg.warm_start == ""
    second = train(cfg, [corpus], tmp_path / "b")  # tokenizer from the first run's folder
    a, b = load_file(first), load_file(second)
    assert set(a) == set(b) and any(k.startswith("noise.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    training = json.loads((tmp_path / "b" / "config.json").read_text())["training"]
    assert training["init_from"]["source"] == str(first)
    assert training["init_from"]["training"]["steps"] == 4
    with pytest.raises(ValueError, match="exclude each other"):
        preset("tiny", init_from=str(tmp_path / "a"), warm_start="minilm")


def test_max_minutes_stops_early_and_writes_a_final_that_loads(
        corpus: Path, tiny_tokenizer_path: Path, tmp_path: Path) -> None:
    from model_export.checkpoint import load_checkpoint_model

    cfg = preset("tiny", steps=1_000_000, max_minutes=0.02, eval_every=0, ckpt_every=100_000)
    final = train(cfg, [corpus], tmp_path, tiny_tokenizer_path)
    facts = json.loads((tmp_path / "config.json").read_text())["training"]
    stop = facts["stopped_early"]
    assert 0 < stop["step"] < 1_000_000 and stop["max_minutes"] == 0.02
    logs = records(tmp_path)
    assert logs[-1]["step"] == stop["step"] and "heldout_noise_ce" in logs[-1]
    model, _, _ = load_checkpoint_model(final)
    weights = load_file(final)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="max_minutes -1"):
        preset("tiny", max_minutes=-1)


def test_ngram_noise_run(corpus: Path, tiny_tokenizer_path: Path, tmp_path: Path) -> None:
    cfg = preset("tiny", noise="ngram", steps=6, log_every=3, eval_every=0, ckpt_every=6)
    train(cfg, [corpus], tmp_path, tiny_tokenizer_path)
    assert (tmp_path / "ngram.npz").exists()
    logs = records(tmp_path)
    assert all(r["mle_loss"] == 0.0 for r in logs if "mle_loss" in r)
    ce = [r for r in logs if "heldout_noise_ce" in r]
    # A counted cloze model sees both neighbours: it beats the left-only bigram.
    assert ce[-1]["heldout_noise_ce"] < ce[-1]["heldout_bigram_ce"]


def test_noise_pretraining_leaves_the_energy_model_alone(corpus: Path,
                                                         tiny_tokenizer_path: Path) -> None:
    tok = load_tokenizer(tiny_tokenizer_path)
    special = SpecialIds.from_tokenizer(tok)
    cfg = preset("tiny", noise_pretrain_steps=2)
    model, _ = build_model(cfg, tok.get_vocab_size())
    stream = BatchStream(pack(tokenize_corpora([corpus], tok, 0.0), cfg.max_len), special,
                         cfg.batch_size, cfg.seed)
    trainer = Trainer(cfg, model, TwoTowerNoise(model), stream, torch.device("cpu"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    terms, _ = trainer.step(0)
    assert set(terms) == {"mle_loss"}
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("energy."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("noise."))
    terms, _ = trainer.step(2)  # the joint phase moves the energy model
    assert "nce_loss" in terms
    assert any(not torch.equal(before[k], model.state_dict()[k])
               for k in before if k.startswith("energy.encoder"))


def test_lr_schedule_warms_up_and_decays_per_phase() -> None:
    cfg = TrainConfig(steps=10, warmup=2, noise_pretrain_steps=4)
    factors = [lr_factor(s, cfg) for s in range(cfg.total_steps)]
    assert factors[:4] == [0.5, 1.0, 1.0, 0.5]  # pre-training: warm-up 2, decay over 2
    assert factors[4:6] == [0.5, 1.0] and factors[5:] == sorted(factors[5:], reverse=True)
    assert factors[-1] > 0


def test_a_continued_head_trains_at_lr_and_a_fresh_one_at_fresh_lr() -> None:
    cfg = preset("tiny", warm_start="", lr=1e-4, fresh_lr=2e-3)
    model, _ = build_model(cfg, vocab_size=64)

    def peak_lr(config: TrainConfig) -> dict[str, float]:
        by_param = {id(p): g["base_lr"] for g in make_optimizer(model, config).param_groups
                    for p in g["params"]}
        return {name: by_param[id(p)] for name, p in model.named_parameters()}

    fresh = peak_lr(cfg)
    continued = peak_lr(dataclasses.replace(cfg, init_from="some-run"))
    assert {fresh[n] for n in fresh if n.startswith("energy.head.")} == {2e-3}
    assert {continued[n] for n in continued if n.startswith("energy.head.")} == {1e-4}
    for lrs in (fresh, continued):
        assert {lrs[n] for n in lrs if n.startswith("noise.")} == {2e-3}
        assert {lrs[n] for n in lrs if n.startswith("energy.encoder.")} == {1e-4}


def test_presets_and_unknown_keys() -> None:
    assert set(TRAIN_PRESETS) == {"tiny", "small", "small_two_tower", "gpu", "base"}
    assert preset("small", steps=5).steps == 5
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        preset("small", stepz=5)
    with pytest.raises(ValueError, match="unknown training preset"):
        preset("huge")
    with pytest.raises(ValueError, match="noise"):
        preset("tiny", noise="gaussian")
    with pytest.raises(ValueError, match="noise_pretrain_steps"):
        preset("tiny", noise="ngram", noise_pretrain_steps=3)
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "extra": 1})
    for bad in ("wiki", "wiki=-1", "wiki=x", "=2", "wiki=nan"):
        with pytest.raises(ValueError, match="corpus_weights item"):
            preset("tiny", corpus_weights=bad)


def test_corpus_weights_name_the_files_by_stem(tmp_path: Path) -> None:
    files = [tmp_path / "wiki.txt.gz", tmp_path / "books.txt", tmp_path / "talk.txt"]
    cfg = preset("tiny", corpus_weights="wiki=4, books=0.5")
    assert corpus_weights(cfg, files) == [4.0, 0.5, 1.0]
    assert corpus_weights(preset("tiny"), files) is None
    with pytest.raises(ValueError, match=r"names \['news'\]"):
        corpus_weights(preset("tiny", corpus_weights="news=2"), files)

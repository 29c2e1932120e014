"""Configuration as frozen dataclasses with named presets: the model's shape (ModelConfig,
MODEL_PRESETS) and a training run's settings (TrainConfig, TRAIN_PRESETS).

Module names in model.py mirror Hugging Face BERT / ELECTRA so that warm starts and imports are
plain renames; ModelConfig's fields use the same meanings as their configs.
``preset(name, **overrides)`` is what ``electric train --preset NAME --set key=value`` calls.
Unknown keys are errors, as in google-research/electra's ``configure_pretraining.py``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


def check_keys(cls: type[Any], data: dict[str, Any]) -> None:
    """Refuse keys that are not fields of the dataclass ``cls``: a typo is an error, never a
    setting silently left at its default."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 30522
    """WordPiece vocabulary size; must match tokenizer.json."""
    hidden: int = 384
    """Width of the energy model's encoder."""
    layers: int = 6
    """Transformer layers in the energy model."""
    heads: int = 12
    """Attention heads in the energy model; must divide ``hidden``."""
    intermediate: int = 1536
    """Feed-forward width of the energy model."""
    embedding_size: int = 0
    """Token embedding width; 0 means ``hidden``. ELECTRA-small uses 128 with a projection."""
    max_positions: int = 512
    """Learned absolute positions; the longest input in tokens, specials included."""
    type_vocab_size: int = 2
    """Segment embeddings (kept for checkpoint compatibility; Electric always uses segment 0)."""
    dropout: float = 0.1
    """Hidden and attention dropout in training."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon, as in BERT."""
    pad_id: int = 0
    """Token id of [PAD]."""
    noise_hidden: int = 96
    """Width of each noise tower: about 1/4 of ``hidden`` (paper, section 4)."""
    noise_layers: int = 3
    """Layers per noise tower."""
    noise_heads: int = 4
    """Attention heads per noise tower; must divide ``noise_hidden``."""
    noise_intermediate: int = 0
    """Feed-forward width of the noise towers; 0 means 4 × ``noise_hidden``."""

    def __post_init__(self) -> None:
        if self.embedding_size == 0:
            object.__setattr__(self, "embedding_size", self.hidden)
        if self.noise_intermediate == 0:
            object.__setattr__(self, "noise_intermediate", 4 * self.noise_hidden)
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.noise_hidden % self.noise_heads:
            raise ValueError(
                f"noise_hidden {self.noise_hidden} is not divisible by noise_heads {self.noise_heads}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        check_keys(cls, data)
        return cls(**data)


MODEL_PRESETS: dict[str, ModelConfig] = {
    # For tests: a few thousand parameters, runs in milliseconds.
    "tiny": ModelConfig(vocab_size=1000, hidden=32, layers=2, heads=2, intermediate=64,
                        max_positions=64, noise_hidden=16, noise_layers=1, noise_heads=2),
    # all-MiniLM-L6-v2's shape, the warm start this project ships with.
    "minilm": ModelConfig(),
    # BERT-base / ELECTRA-base shape, for GPUs.
    "base": ModelConfig(hidden=768, layers=12, heads=12, intermediate=3072,
                        noise_hidden=192, noise_layers=3, noise_heads=3),
}


NOISE_KINDS = ("two_tower", "ngram")
AMP_MODES = ("none", "bf16", "fp16")
# Stands for the all-MiniLM-L6-v2 folder that ships inside the venv (warmstart.py resolves it), so a
# preset names no machine-specific path.
MINILM = "minilm"


@dataclass(frozen=True)
class TrainConfig:
    name: str = "custom"
    """Preset name; recorded in config.json and the artifact manifest."""
    model: str = "minilm"
    """MODEL_PRESETS key giving the architecture when ``warm_start`` is empty. With a warm start
    the architecture is read from the checkpoint's config.json instead."""
    warm_start: str = ""
    """BERT-family folder (config.json + model.safetensors) whose encoder starts the energy model;
    ``"minilm"`` is the bundled all-MiniLM-L6-v2; empty trains from random weights."""
    init_from: str = ""
    """A finished run's folder (its final.safetensors): every weight, energy model and noise
    towers, starts from there, and so do the architecture and the tokenizer. For continuing a
    model on other text or settings (domain adaptation); excludes ``warm_start``. An exported
    artifact folder (electric.json) works too: its energy model is read back from the ONNX
    file and the noise towers start fresh (``noise_pretrain_steps`` must be > 0)."""
    max_len: int = 64
    """Longest packed sequence in tokens, [CLS] and [SEP] included. Cost grows with it; scored
    sentences longer than this are rarely seen in training."""
    batch_size: int = 32
    """Sequences per optimizer step."""
    steps: int = 2000
    """Joint NCE steps, after the ``noise_pretrain_steps``."""
    lr: float = 1e-4
    """Peak learning rate of the energy model's embeddings and encoder: what a warm start
    provides, so a nudge is enough."""
    fresh_lr: float = 5e-4
    """Peak learning rate of the parts that start from random weights: the energy head and the
    noise model. Their outputs must travel far (energies of several nats) in a short run; set
    it equal to ``lr`` when training from scratch. With ``init_from`` the head is read, and it
    trains at ``lr`` with the encoder; the noise towers keep ``fresh_lr``."""
    warmup: int = 100
    """Linear warm-up steps at the start of each phase; then linear decay to 0 at its end."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay; never applied to biases, LayerNorm or embeddings' padding."""
    clip: float = 1.0
    """Global gradient-norm clip; 0 switches clipping off."""
    seed: int = 0
    """Seeds weights, dropout, masking, noise samples and the data order."""
    noise: str = "two_tower"
    """Noise distribution q: ``two_tower`` (the paper's cloze model, trained jointly by MLE) or
    ``ngram`` (count-based cloze n-gram built from the training corpus, no training)."""
    noise_pretrain_steps: int = 0
    """Steps that train q alone (cloze MLE) before joint training, so the energy model never
    learns from the near-uniform samples of an untrained q. Two-tower noise only."""
    mask_prob: float = 0.15
    """Fraction of positions replaced by noise samples (the paper's 15%)."""
    nce_weight: float = 50.0
    """Weight of the NCE term, as the reference implementation (it scales ELECTRA's
    discriminator loss the same way)."""
    mle_weight: float = 1.0
    """Weight of q's cloze MLE term in the joint loss."""
    data_fraction: float = 1.0
    """Fraction of the unmasked (data) positions that enter the NCE loss; below 1 saves the
    noise model's log q at the positions skipped."""
    dropout: float = 0.1
    """Dropout of the energy model and the noise towers in training (replaces the warm start's
    or the model preset's). A run that sees each sequence about once has little to overfit."""
    freeze_embeddings: bool = False
    """Keep the shared word embeddings fixed (MiniLM: 11.7M of 22.7M parameters): no gradient,
    no AdamW state, and they stay what the warm start learnt."""
    amp: str = "none"
    """Autocast dtype: ``none``, ``bf16`` (CPU or CUDA) or ``fp16`` (CUDA, with loss scaling)."""
    threads: int = 0
    """torch intra-op threads while training (restored after); 0 keeps the current setting.
    A tiny model runs faster on one thread than paying for two threads' synchronisation."""
    heldout_fraction: float = 0.02
    """Fraction of documents (chosen by a hash of their text) kept out of training for the
    held-out cloze evaluation."""
    plain_fraction: float = 0.0
    """Fraction of documents (chosen by another hash) trained in speech form: lower case, no
    punctuation, as ASR n-best lists are written (data.speech_form)."""
    corpus_weights: str = ""
    """Mixes the corpora: ``name=weight,...`` with ``name`` a corpus file's name without
    ``.txt``/``.txt.gz``; unnamed files weigh 1. A weight of 2 puts every sequence of that file
    twice into each epoch, 0.5 a fresh half (data.BatchStream). For up-weighting small text that
    is close to what users score, and down-weighting a large corpus far from it."""
    eval_sequences: int = 256
    """Held-out sequences scored at each evaluation (a fixed, deterministic subset)."""
    log_every: int = 10
    """Steps between metric lines in metrics.jsonl."""
    eval_every: int = 200
    """Steps between held-out cloze evaluations; 0 evaluates only at the end."""
    ckpt_every: int = 500
    """Steps between checkpoints; one is always written at the end."""
    max_minutes: float = 0.0
    """Wall-clock budget of one ``train`` call's steps, in minutes; 0 switches it off. When it
    is spent the run evaluates, checkpoints and writes its final weights as a finished run
    would (``training.stopped_early`` records where). For a machine rented by the hour or a
    job with a deadline; the lr schedule still follows ``steps``, so set those to what fits in
    the budget and let ``max_minutes`` be the backstop."""

    def __post_init__(self) -> None:
        checks = [
            (self.noise in NOISE_KINDS, f"noise {self.noise!r} is not one of {NOISE_KINDS}"),
            (self.amp in AMP_MODES, f"amp {self.amp!r} is not one of {AMP_MODES}"),
            (self.warm_start != "" or self.model in MODEL_PRESETS,
             f"model {self.model!r} is not one of {sorted(MODEL_PRESETS)}"),
            (self.max_len >= 3, f"max_len {self.max_len} must be at least 3"),
            (self.batch_size >= 1, f"batch_size {self.batch_size} must be at least 1"),
            (self.steps >= 1, f"steps {self.steps} must be at least 1"),
            (self.noise_pretrain_steps >= 0, "noise_pretrain_steps must be >= 0"),
            (self.noise_pretrain_steps == 0 or self.noise == "two_tower",
             "noise_pretrain_steps needs noise='two_tower' (an n-gram q is counted, not trained)"),
            (0 <= self.dropout < 1, f"dropout {self.dropout} must be in [0, 1)"),
            (0 < self.mask_prob < 1, f"mask_prob {self.mask_prob} must be in (0, 1)"),
            (0 < self.data_fraction <= 1, f"data_fraction {self.data_fraction} must be in (0, 1]"),
            (0 <= self.heldout_fraction < 1, "heldout_fraction must be in [0, 1)"),
            (0 <= self.plain_fraction <= 1,
             f"plain_fraction {self.plain_fraction} must be in [0, 1]"),
            (not (self.init_from and self.warm_start),
             "init_from and warm_start exclude each other: init_from brings every weight"),
            (min(self.log_every, self.ckpt_every) >= 1, "log_every and ckpt_every must be >= 1"),
            (self.eval_every >= 0 and self.warmup >= 0 and self.threads >= 0,
             "eval_every, warmup and threads must be >= 0"),
            (self.max_minutes >= 0, f"max_minutes {self.max_minutes} must be >= 0"),
        ]
        try:
            parse_corpus_weights(self.corpus_weights)
        except ValueError as exc:
            checks.append((False, str(exc)))
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise ValueError("invalid TrainConfig: " + "; ".join(errors))

    @property
    def total_steps(self) -> int:
        return self.noise_pretrain_steps + self.steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        check_keys(cls, data)
        return cls(**data)


def parse_corpus_weights(text: str) -> dict[str, float]:
    """``"wiki=4,gutenberg_01=0.4"`` -> ``{"wiki": 4.0, "gutenberg_01": 0.4}``."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        try:
            weight = float(value) if sep and name.strip() else -1.0
        except ValueError:
            weight = -1.0
        if not weight >= 0:  # also refuses NaN
            raise ValueError(f"corpus_weights item {item!r} is not name=weight with weight >= 0")
        weights[name.strip()] = weight
    return weights


def corpus_stem(path_name: str) -> str:
    """A corpus file's name without ``.gz`` and ``.txt``: what ``corpus_weights`` names."""
    for suffix in (".gz", ".txt"):
        path_name = path_name.removesuffix(suffix)
    return path_name


# The corpus mix of the shipped model (docs/TRAINING.md, "The 42M-word corpora", says why).
SHIPPED_MIX = ("wiki_vital_summaries=4,switchboard_sample=4,masc=2,brown=1.5,"
               "sgd_dialogues=0.5,kjv=0.5,shakespeare=0.5,gutenberg_01=0.4,gutenberg_02=0.4")

TRAIN_PRESETS: dict[str, TrainConfig] = {
    # For tests: the tiny random model, a few dozen steps, seconds on a laptop core.
    "tiny": TrainConfig(
        name="tiny", model="tiny", max_len=32, batch_size=8, steps=30, lr=3e-3, fresh_lr=1e-2,
        warmup=5, noise_pretrain_steps=0, threads=1, eval_sequences=16, log_every=5,
        eval_every=10, ckpt_every=10),
    # This 2-core CPU: MiniLM warm start and the fast path measured in docs/TRAINING.md (frozen
    # embeddings, bf16 autocast, no dropout). The counted n-gram q: on a CPU budget it is both
    # the better noise (held-out cloze CE 4.5 nats against the two-tower's 5.4 after 500
    # pre-training steps) and the cheaper one (no V-way softmax anywhere).
    "small": TrainConfig(
        name="small", warm_start=MINILM, max_len=64, batch_size=32, steps=2000, lr=1e-4,
        fresh_lr=2e-3, warmup=100, noise="ngram", dropout=0.0, freeze_embeddings=True,
        amp="bf16", log_every=10, eval_every=250, ckpt_every=250),
    # The paper's two-tower q on the same CPU: q pre-trained alone first so that joint training
    # starts from informative noise, and a quarter of the data positions in the NCE loss (each
    # needs q's 30,522-way softmax).
    "small_two_tower": TrainConfig(
        name="small_two_tower", warm_start=MINILM, max_len=64, batch_size=32, steps=2000,
        lr=1e-4, fresh_lr=2e-3, warmup=100, noise="two_tower", noise_pretrain_steps=500,
        data_fraction=0.25, dropout=0.0, freeze_embeddings=True, amp="bf16", log_every=10,
        eval_every=250, ckpt_every=250),
    # One GPU (docs/TRAINING.md, "Training on a GPU"): the recipe of the shipped model
    # (small_two_tower at max_len 40 with SHIPPED_MIX), bf16, 512 sequences a step instead of 48,
    # q pre-trained for 1/8 of the steps as in the shipped run (500 of 4,000). No wall-clock
    # budget by default: --set max_minutes=N ends the run cleanly, final weights written.
    "gpu": TrainConfig(
        name="gpu", warm_start=MINILM, max_len=40, batch_size=512, steps=5250,
        noise_pretrain_steps=750, lr=1e-4, fresh_lr=2e-3, warmup=200, noise="two_tower",
        data_fraction=0.25, dropout=0.0, freeze_embeddings=True, amp="bf16",
        corpus_weights=SHIPPED_MIX, eval_sequences=1024, log_every=50, eval_every=1000,
        ckpt_every=1000),
    # A GPU: the paper's base shape and sequence length, from scratch unless warm_start is set.
    "base": TrainConfig(
        name="base", model="base", max_len=128, batch_size=256, steps=200_000, lr=2e-4,
        fresh_lr=2e-4, warmup=10_000, amp="bf16", eval_sequences=1024, log_every=100,
        eval_every=5000, ckpt_every=5000),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The named preset with ``overrides`` applied; unknown names or keys are errors."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}; choose from {sorted(TRAIN_PRESETS)}")
    check_keys(TrainConfig, overrides)
    if overrides.get("init_from") and "warm_start" not in overrides:
        overrides = {**overrides, "warm_start": ""}  # the run's weights replace the preset's
    return dataclasses.replace(TRAIN_PRESETS[name], **overrides)

"""NCE training of an Electric model: ``train(cfg, corpora, run_dir, tokenizer_path)``.

The run directory holds everything a run needs to resume and everything export needs:

    tokenizer.json        copy of the tokenizer the run was made with
    tokens.npz            tokenized corpora (data.py's cache)
    ngram.npz             the n-gram noise model (noise="ngram" only)
    metrics.jsonl         one line per log_every steps, one per evaluation
    checkpoint.safetensors  model + AdamW state + RNG states + RunState (checkpoint.py)
    final.safetensors     model weights, with config.json beside it: what ``electric export`` reads
    config.json           ModelConfig, TrainConfig and the training facts for the manifest

Rerunning ``train`` on a run directory with a checkpoint continues from it and produces the same
losses as an uninterrupted run: the data order is a pure function of (seed, step), and the
checkpoint carries the RNG streams (dropout, masking and noise samples) and the metric window.

Two phases share one step counter and one data stream: ``noise_pretrain_steps`` of q alone
(cloze MLE at the masked positions), then ``steps`` of the joint objective (nce.py). Each phase
has its own linear warm-up and linear decay (schedule.py).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model_export.checkpoint import (
    RunState,
    load_checkpoint,
    load_checkpoint_model,
    save_checkpoint,
)
from model_export.cloze_eval import cloze_cross_entropy, unigram_bigram_baselines
from model_export.config import MODEL_PRESETS, ModelConfig, TrainConfig
from model_export.data import (
    Batch,
    BatchStream,
    PackedSequences,
    SpecialIds,
    load_or_tokenize,
    load_tokenizer,
    pack,
)
from model_export.distributed import World
from model_export.from_artifact import electric_from_artifact, is_artifact
from model_export.model import Electric
from model_export.nce import (
    NCEConfig,
    NCEOutput,
    NoiseModel,
    TwoTowerNoise,
    choose_positions,
    nce_loss,
)
from model_export.ngram import NgramCloze
from model_export.run_files import (
    CHECKPOINT,
    FINAL,
    METRICS,
    MetricsLog,
    hardware,
    write_final,
)
from model_export.schedule import lr_factor, make_optimizer, phase_of
from model_export.shard import check_shard, corpus_weights, load_shard
from model_export.warmstart import config_from_bert, load_bert_encoder, resolve_warm_start
from service.artifact import load_manifest

# TrainConfig fields that may differ when a run is resumed: they change no step's result.
RESUMABLE_CHANGES = frozenset({"steps", "log_every", "eval_every", "ckpt_every", "threads",
                               "max_minutes"})
# Loss terms averaged over a log window, per phase.
WINDOW_KEYS = {"noise_pretrain": ("mle_loss",),
               "joint": ("loss", "nce_loss", "mle_loss", "noise_acc", "data_acc", "copy_rate")}


def build_model(cfg: TrainConfig, vocab_size: int) -> tuple[Electric, dict[str, Any] | None]:
    """A seeded Electric model, its encoder copied from the warm start if there is one, or all
    of it from ``init_from``'s final weights."""
    if cfg.init_from:
        return _model_from_run(cfg, vocab_size)
    folder = resolve_warm_start(cfg.warm_start)
    mcfg = (config_from_bert(folder, dropout=cfg.dropout) if folder else
            dataclasses.replace(MODEL_PRESETS[cfg.model], vocab_size=vocab_size,
                                dropout=cfg.dropout))
    _check_shape(cfg, mcfg, vocab_size)
    torch.manual_seed(cfg.seed)
    model = Electric(mcfg)
    report = load_bert_encoder(model, folder) if folder else None
    if cfg.freeze_embeddings:
        model.word_embeddings.weight.requires_grad_(False)
    return model, report


def _check_shape(cfg: TrainConfig, mcfg: ModelConfig, vocab_size: int) -> None:
    if mcfg.vocab_size != vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} tokens but the model {mcfg.vocab_size}")
    if cfg.max_len > mcfg.max_positions:
        raise ValueError(f"max_len {cfg.max_len} exceeds the model's {mcfg.max_positions} positions")


def _model_from_run(cfg: TrainConfig, vocab_size: int) -> tuple[Electric, dict[str, Any]]:
    """Every weight from a finished run; its training facts come along for the model card.

    ``init_from`` may also be an exported artifact (electric.json): its energy model is read
    back from the ONNX graph (from_artifact.py) and the noise towers start fresh.
    """
    if is_artifact(Path(cfg.init_from)):
        return _model_from_artifact(cfg, vocab_size)
    final = Path(cfg.init_from) / FINAL
    loaded, mcfg, facts = load_checkpoint_model(final)
    mcfg = dataclasses.replace(mcfg, dropout=cfg.dropout)
    _check_shape(cfg, mcfg, vocab_size)
    torch.manual_seed(cfg.seed)
    model = Electric(mcfg)
    state = loaded.state_dict()
    if cfg.noise == "two_tower" and set(model.state_dict()) - set(state):
        raise ValueError(f"{final} has no noise towers to continue: train with noise='ngram' "
                         "or from a run that trained two-tower noise")
    model.load_state_dict(state, strict=cfg.noise == "two_tower")
    if cfg.freeze_embeddings:
        model.word_embeddings.weight.requires_grad_(False)
    return model, {"source": str(final), "training": facts["training"]}


def _model_from_artifact(cfg: TrainConfig, vocab_size: int) -> tuple[Electric, dict[str, Any]]:
    folder = Path(cfg.init_from)
    if cfg.noise == "two_tower" and cfg.noise_pretrain_steps == 0:
        raise ValueError(f"{folder} is an artifact, which holds no noise towers: give "
                         "noise_pretrain_steps > 0 to train them before the joint phase")
    model, mcfg = electric_from_artifact(folder, dropout=cfg.dropout, seed=cfg.seed)
    _check_shape(cfg, mcfg, vocab_size)
    if cfg.freeze_embeddings:
        model.word_embeddings.weight.requires_grad_(False)
    return model, {"source": str(folder), "training": load_manifest(folder).training}


class Trainer:
    """The state that one optimizer step reads and writes."""

    def __init__(self, cfg: TrainConfig, model: Electric, noise: NoiseModel, stream: BatchStream,
                 device: torch.device, world: World | None = None):
        self.cfg = cfg
        self.world = world
        self.model = model.to(device).train()
        self.noise = noise
        self.stream = stream
        self.device = device
        self.optimizer = make_optimizer(model, cfg)
        self.nce_cfg = NCEConfig(mask_prob=cfg.mask_prob, nce_weight=cfg.nce_weight,
                                 mle_weight=cfg.mle_weight, data_fraction=cfg.data_fraction)
        # Masking and noise samples draw from their own stream; dropout uses the global one.
        # Each rank has its own streams (rank 0's are the one-process ones): the model's
        # initialisation above came from the shared seed, so the replicas start equal.
        rank = world.rank if world else 0
        self.generator = torch.Generator(device=device).manual_seed(cfg.seed + 1 + rank)
        if rank:
            torch.manual_seed(cfg.seed + 7919 * rank)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        if cfg.amp == "fp16" and device.type != "cuda":
            raise ValueError("amp='fp16' needs CUDA; use amp='bf16' on CPU")

    def autocast(self) -> Any:
        if self.cfg.amp == "none":
            return nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def set_phase(self, phase: str) -> None:
        """Pre-training q leaves the energy model and the shared embeddings as they are."""
        emb = self.model.word_embeddings.weight
        emb.requires_grad_(phase == "joint" and not self.cfg.freeze_embeddings)

    def step(self, step: int) -> tuple[dict[str, float], Batch]:
        """One optimizer step on batch ``step``; returns its loss terms and the batch."""
        phase = phase_of(step, self.cfg)
        self.set_phase(phase)
        factor = lr_factor(step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        batch = self.stream.batch(step)  # the global batch: what the step's counters count
        world = self.world
        local = (batch if world is None else
                 Batch(batch.input_ids[world.rank::world.size],
                       batch.attention_mask[world.rank::world.size],
                       batch.special_mask[world.rank::world.size])).to(self.device)
        with self.autocast():
            if phase == "joint":
                out = nce_loss(self.model, local.input_ids, local.attention_mask,
                               local.special_mask, self.nce_cfg, self.noise, self.generator)
                if world is None:
                    loss = out.loss
                    terms = {"loss": out.loss.item(), "nce_loss": out.nce_loss.item(),
                             "mle_loss": out.mle_loss.item(), "noise_acc": out.noise_acc,
                             "data_acc": out.data_acc, "copy_rate": out.copy_rate}
                else:
                    loss, shares = self.global_share(out)
            else:
                loss, n_rows = self.cloze_mle(local)
                terms = {"mle_loss": loss.item()}
                if world is not None:
                    total = world.sum(torch.tensor([n_rows], device=self.device))
                    loss = loss * (n_rows / max(float(total.item()), 1.0))
                    shares = {"mle_loss": loss.detach().float()}
        # Tensor.backward carries no annotations in torch.
        self.scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
        if world is not None:
            # Each rank's loss is its share of the global one: the SUM of the gradients is
            # the one-process gradient (DDP would average, i.e. divide by the world size).
            params = [p for g in self.optimizer.param_groups for p in g["params"]
                      if p.requires_grad]
            summed = world.sum_grads(params, torch.stack(list(shares.values())).float())
            terms = dict(zip(shares, summed.tolist()))
            if phase == "joint":
                terms["loss"] = (self.nce_cfg.mle_weight * terms["mle_loss"]
                                 + self.nce_cfg.nce_weight * terms["nce_loss"])
        if self.cfg.clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]
                      if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return terms, batch

    def global_share(self, out: NCEOutput) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """This rank's share of the global batch's loss: its NCE sum over the GLOBAL count of
        scorable positions, its cloze MLE sum over the global count of noise positions; and
        its shares of the logged terms, which sum over ranks to the global figures."""
        assert self.world is not None
        local = torch.tensor([out.n_scorable, out.n_noise, out.n_data], device=self.device)
        n_scorable, n_noise, n_data = self.world.sum(local.clone()).clamp(min=1).tolist()
        w_nce = out.n_scorable / n_scorable
        w_noise, w_data = out.n_noise / n_noise, out.n_data / n_data
        nce, mle = out.nce_loss * w_nce, out.mle_loss * w_noise
        loss = self.nce_cfg.mle_weight * mle + self.nce_cfg.nce_weight * nce
        t = partial(torch.tensor, device=self.device)
        shares = {"nce_loss": nce.detach().float(), "mle_loss": mle.detach().float(),
                  "noise_acc": t(out.noise_acc * w_noise), "data_acc": t(out.data_acc * w_data),
                  "copy_rate": t(out.copy_rate * w_noise)}
        return loss, shares

    def cloze_mle(self, batch: Batch) -> tuple[torch.Tensor, float]:
        """q's cloze cross-entropy at the positions the joint phase would mask, and how many
        positions it averages over."""
        scorable = batch.attention_mask.bool() & ~batch.special_mask
        noise_mask, _, _, _ = choose_positions(scorable, self.nce_cfg, self.generator)
        noise_pos = noise_mask.nonzero()  # (N, 2)
        draw = self.noise.sample_and_score(batch.input_ids, batch.attention_mask, noise_pos,
                                           noise_pos[:0], self.generator)
        assert draw.mle_loss is not None, "noise pre-training needs a trainable noise model"
        return draw.mle_loss, float(len(noise_pos))


def make_noise(cfg: TrainConfig, model: Electric, train_seqs: list[np.ndarray],
               special: SpecialIds, run_dir: Path) -> NoiseModel:
    if cfg.noise == "two_tower":
        return TwoTowerNoise(model)
    path = run_dir / "ngram.npz"
    if path.exists():
        return NgramCloze.load(path)
    ngram = NgramCloze.build(train_seqs, model.cfg.vocab_size, [special.cls, special.sep],
                             special.pad)
    ngram.save(path)
    return ngram


def framed(sequences: PackedSequences, special: SpecialIds, limit: int | None = None
           ) -> list[np.ndarray]:
    """Framed sequences; with ``limit``, an evenly spread deterministic subset of that size."""
    index = (range(len(sequences)) if limit is None or limit >= len(sequences)
             else np.linspace(0, len(sequences) - 1, limit).round().astype(int))
    return [sequences.sequence(int(i), special) for i in index]


def training_data(cfg: TrainConfig, corpora: list[Path], shard: Path | None, run_dir: Path,
                  tokenizer_path: Path
                  ) -> tuple[PackedSequences, list[float] | None, list[str], dict[str, Any] | None]:
    """Packed sequences (training and held-out), corpus weights, corpus file names and the
    shard's provenance: from the corpora (tokenized into the run's cache), or from a shard."""
    if shard is not None:
        if corpora:
            raise ValueError("give corpora or a shard, not both")
        loaded = load_shard(shard)
        check_shard(loaded, cfg, tokenizer_path)
        return loaded.sequences, loaded.weights, loaded.corpora, loaded.meta
    corpus = load_or_tokenize(corpora, tokenizer_path, run_dir / "tokens.npz",
                              cfg.heldout_fraction, cfg.plain_fraction)
    return (pack(corpus, cfg.max_len), corpus_weights(cfg, corpora), [p.name for p in corpora],
            None)


def train(cfg: TrainConfig, corpora: list[Path], run_dir: Path,
          tokenizer_path: Path | None = None, shard: Path | None = None) -> Path:
    """Train (or resume) a run; returns the path of ``final.safetensors``.

    ``tokenizer_path`` defaults to the warm start's tokenizer.json. With ``shard`` (shard.py)
    the packed sequences come from there and ``corpora`` must be empty.

    Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set) every rank calls this: they train one
    model on slices of the same global batches (distributed.py), and rank 0 alone writes the
    run's files while the others wait for it.
    """
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = World.from_env()
    started = world.start() if world else False
    try:
        return _train(cfg, corpora, run_dir, tokenizer_path, shard, world)
    finally:
        torch.set_num_threads(threads)
        if world and started:
            world.close()


def _train(cfg: TrainConfig, corpora: list[Path], run_dir: Path,
           tokenizer_path: Path | None, shard: Path | None, world: World | None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    device = (world.device() if world else
              torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if world and cfg.batch_size < world.size:
        raise ValueError(f"batch_size {cfg.batch_size} is smaller than the {world.size} ranks: "
                         "every rank needs at least one sequence of each batch")
    writer = world is None or world.is_writer
    warm = Path(cfg.init_from) if cfg.init_from else resolve_warm_start(cfg.warm_start)
    if tokenizer_path is None:
        if warm is None:
            raise ValueError("no tokenizer: give tokenizer_path, a warm_start or init_from folder")
        tokenizer_path = warm / "tokenizer.json"
    run_tokenizer = run_dir / "tokenizer.json"  # export reads the copy beside the weights
    with world.writer_first() if world else nullcontext():
        if writer and tokenizer_path.resolve() != run_tokenizer.resolve():
            shutil.copyfile(tokenizer_path, run_tokenizer)
        tokenizer = load_tokenizer(run_tokenizer)
        packed, weights, corpus_names, shard_meta = training_data(cfg, corpora, shard, run_dir,
                                                                  run_tokenizer)
    special = SpecialIds.from_tokenizer(tokenizer)
    special_ids = [special.cls, special.sep]

    train_part, heldout_part = packed.subset(False), packed.subset(True)
    eval_seqs = framed(heldout_part, special, cfg.eval_sequences)

    ckpt = run_dir / CHECKPOINT
    resuming = ckpt.exists()
    # A resumed run takes its weights from the checkpoint: skip reading the warm start.
    model, warm_report = build_model(
        dataclasses.replace(cfg, warm_start="", init_from="") if resuming else cfg,
        tokenizer.get_vocab_size())
    needs_counts = not resuming or (cfg.noise == "ngram" and not (run_dir / "ngram.npz").exists())
    train_seqs = framed(train_part, special) if needs_counts else []
    with world.writer_first() if world else nullcontext():
        noise = make_noise(cfg, model, train_seqs, special, run_dir)  # ngram.npz: rank 0 counts
    stream = BatchStream(train_part, special, cfg.batch_size, cfg.seed, weights=weights)
    trainer = Trainer(cfg, model, noise, stream, device, world)

    if resuming:
        state = load_checkpoint(ckpt, trainer, world.rank if world else 0,
                                world.size if world else 1)
        # A key the checkpoint lacks was added later; such a run trained with its default.
        saved = {**TrainConfig().to_dict(), **state.train_config}
        changed = sorted(k for k, v in cfg.to_dict().items()
                         if saved[k] != v and k not in RESUMABLE_CHANGES)
        if changed:
            raise ValueError(f"{run_dir} holds a run with different settings {changed}; "
                             "use a new run_dir or the original settings")
        state.train_config = cfg.to_dict()
    else:
        baselines = (unigram_bigram_baselines(train_seqs, eval_seqs, model.cfg.vocab_size,
                                              special_ids=special_ids, pad_id=special.pad)
                     if eval_seqs else None)
        state = RunState(train_config=cfg.to_dict(), baselines=baselines,
                         warm_start=warm_report["source"] if warm_report else None,
                         init_from=warm_report if cfg.init_from and warm_report else None)
    del train_seqs

    log = MetricsLog(run_dir / METRICS, state.step, world.size if world else 1, enabled=writer)

    def evaluate(step: int) -> None:
        # Rank 0 alone: the replicas hold the same weights, so the figure is the same anywhere.
        if not eval_seqs or not writer:
            return
        # float32 even when training autocasts: the figure is compared with exact baselines.
        ce = cloze_cross_entropy(noise, eval_seqs, special_ids=special_ids, pad_id=special.pad)
        base = state.baselines
        assert base is not None, "a run with held-out sequences has their baselines"
        state.last["heldout_noise_ce"] = ce
        log.write({"step": step, "heldout_noise_ce": ce, "heldout_unigram_ce": base["unigram"],
                   "heldout_bigram_ce": base["bigram"], "heldout_tokens": base["tokens"]})

    if state.step == 0:
        evaluate(0)
    run_loop(cfg, trainer, state, log, evaluate, ckpt)

    spread = world.max_param_difference(model) if world else None
    facts = {"preset": cfg.name, "warm_start": state.warm_start,
             **({"init_from": state.init_from} if state.init_from is not None else {}),
             "corpora": corpus_names,
             **({"corpus_weights": dict(zip(corpus_names, weights))} if weights else {}),
             **({"shard": {**shard_meta, "file": shard.name}} if shard_meta and shard else {}),
             **({"stopped_early": state.stopped_early} if state.stopped_early is not None
                else {}),
             "noise": cfg.noise,
             "noise_pretrain_steps": cfg.noise_pretrain_steps, "steps": cfg.steps,
             "batch_size": cfg.batch_size, "max_len": cfg.max_len,
             "tokens_seen": state.tokens_seen, "sequences_seen": state.sequences_seen,
             "wall_time_s": round(state.wall_time_s, 1), "hardware": hardware(),
             "final": state.last, "heldout_baselines": state.baselines,
             **({"world_size": world.size, "replica_max_abs_diff": spread} if world else {})}
    if not world:
        return write_final(run_dir, model, cfg.to_dict(), facts)
    if spread:
        raise RuntimeError(f"the {world.size} replicas diverged: weights differ by up to {spread}")
    if writer:
        write_final(run_dir, model, cfg.to_dict(), facts)
    world.barrier()  # the others return once the final weights are on disk
    return run_dir / FINAL


def run_loop(cfg: TrainConfig, trainer: Trainer, state: RunState, log: MetricsLog,
             evaluate: Callable[[int], None], ckpt: Path) -> None:
    """Steps from ``state.step`` to the end: log windows, evaluations, checkpoints.

    With ``cfg.max_minutes`` the loop ends after the first step that finds that much wall time
    spent in this call, evaluating and checkpointing there, and the run finishes as usual.
    """
    session_start = budget_start = time.perf_counter()
    state.stopped_early = None  # a resumed run gets the budget again
    window_time, window_tokens = 0.0, 0  # for tokens/s: step compute only, not eval or saving
    world = trainer.world
    bar = tqdm(total=cfg.total_steps, initial=state.step, unit="step", dynamic_ncols=True,
               disable=world is not None and not world.is_writer)
    for step in range(state.step, cfg.total_steps):
        t0 = time.perf_counter()
        terms, batch = trainer.step(step)
        real = batch.real_tokens
        window_time += time.perf_counter() - t0
        window_tokens += real
        state.tokens_seen += real
        state.sequences_seen += batch.input_ids.shape[0]
        phase, done = phase_of(step, cfg), step + 1
        window = state.window  # running sums, checkpointed so a resumed window is exact
        window["n"] = window.get("n", 0) + 1
        for key, value in terms.items():
            window[key] = window.get(key, 0.0) + value
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.total_steps or phase_of(done, cfg) != phase:
            record: dict[str, Any] = {
                "step": done, "phase": phase,
                **{k: window[k] / window["n"] for k in WINDOW_KEYS[phase]},
                "lr": cfg.lr * lr_factor(step, cfg),
                "fresh_lr": cfg.fresh_lr * lr_factor(step, cfg),
                "tokens_per_s": window_tokens / max(window_time, 1e-9),
                "tokens_seen": state.tokens_seen}
            log.write(record)
            state.window = {}
            state.last.update({k: record[k] for k in WINDOW_KEYS[phase]})
            bar.set_postfix(loss=f"{record.get('loss', record['mle_loss']):.3f}",
                            tok_s=f"{record['tokens_per_s']:.0f}")
            window_time, window_tokens = 0.0, 0
        out_of_time = (cfg.max_minutes > 0 and done < cfg.total_steps
                       and time.perf_counter() - budget_start >= cfg.max_minutes * 60)
        if world and cfg.max_minutes > 0:
            out_of_time = world.any(out_of_time, trainer.device)  # the ranks stop together
        if out_of_time:
            state.stopped_early = {"step": done, "planned_steps": cfg.total_steps,
                                      "max_minutes": cfg.max_minutes}
        final = done == cfg.total_steps or out_of_time
        if final or (cfg.eval_every and done % cfg.eval_every == 0):
            evaluate(done)
        if final or done % cfg.ckpt_every == 0:
            state.step = done
            state.wall_time_s += time.perf_counter() - session_start
            session_start = time.perf_counter()
            save_checkpoint(ckpt, trainer, state, world)
        if out_of_time:
            break
    bar.close()
    state.wall_time_s += time.perf_counter() - session_start

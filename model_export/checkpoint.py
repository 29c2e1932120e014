"""Checkpoint I/O: the resumable training checkpoint with its typed run state, and rebuilding an
Electric model from any run's weights (``final.safetensors`` or a checkpoint).

A training checkpoint is safetensors tensors (``model.*``, ``optim.<param>.<slot>``, ``rng.*``)
plus one metadata entry ``state``: RunState as JSON with the GradScaler's state beside it. It is
written to a temporary file and renamed (run_files.atomic_save), so a crash mid-write leaves the
previous checkpoint intact. Export, verify, evaluation and ``init_from`` all read weights
through ``load_checkpoint_model``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model_export.config import ModelConfig, check_keys
from model_export.distributed import World
from model_export.model import Electric
from model_export.run_files import atomic_save


@dataclass(kw_only=True)
class RunState:
    """What a run has done so far: the counters, the open log window and the facts the final
    weights' model card records. Checkpointed with the weights, so a resumed run continues
    exactly where the interrupted one stopped."""

    step: int = 0
    """Optimizer steps done (both phases share the counter); the next step's batch index."""
    tokens_seen: int = 0
    """Real (not padding) tokens trained on."""
    sequences_seen: int = 0
    """Packed sequences trained on."""
    wall_time_s: float = 0.0
    """Seconds spent in training calls, summed over resumes."""
    window: dict[str, float] = field(default_factory=dict)
    """Running sums of the loss terms since the last metrics line, and their count ``n``."""
    train_config: dict[str, Any]
    """The TrainConfig (``to_dict``) of the latest call; a resume checks that it may continue."""
    baselines: dict[str, float] | None
    """Held-out unigram / bigram cross-entropy (cloze_eval); None without held-out sequences."""
    warm_start: str | None
    """Where the starting weights came from (a warm start's or ``init_from``'s source)."""
    last: dict[str, float] = field(default_factory=dict)
    """The latest logged loss terms and held-out CE: the ``final`` figures of the model card."""
    init_from: dict[str, Any] | None = None
    """With ``init_from``: the finished run's final file and its training facts."""
    stopped_early: dict[str, Any] | None = None
    """Set when ``max_minutes`` ended a call before ``total_steps``: where, and why."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form; the optional entries are left out when unset, as a reader expects."""
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items()
                if not (k in ("init_from", "stopped_early") and v is None)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunState:
        check_keys(cls, data)
        return cls(**data)


class Resumable(Protocol):
    """What a training checkpoint captures besides the run state: train.Trainer has these."""

    @property
    def model(self) -> Electric: ...
    @property
    def optimizer(self) -> torch.optim.Optimizer: ...
    @property
    def scaler(self) -> torch.amp.GradScaler: ...
    @property
    def generator(self) -> torch.Generator: ...
    @property
    def device(self) -> torch.device: ...


def _rng_states(trainer: Resumable) -> dict[str, torch.Tensor]:
    states = {"torch": torch.get_rng_state(), "generator": trainer.generator.get_state()}
    if trainer.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(trainer.device)
    return states


def save_checkpoint(path: Path, trainer: Resumable, state: RunState,
                    world: World | None = None) -> None:
    """Weights, AdamW slots, the RNG streams and ``state``, atomically.

    In a data-parallel run every rank calls this (its RNG streams are gathered: ``rng.*`` are
    rank 0's, ``rng.<r>.*`` rank r's) and rank 0 writes the file.
    """
    gathered = world.gather_objects(_rng_states(trainer)) if world else [_rng_states(trainer)]
    if world and not world.is_writer:
        return
    model = trainer.model
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    names: dict[torch.Tensor, str] = {p: n for n, p in model.named_parameters()}
    for p, slots in trainer.optimizer.state.items():
        for key, value in slots.items():
            tensors[f"optim.{names[p]}.{key}"] = value.detach().cpu().contiguous()
    for rank, states in enumerate(gathered):
        assert isinstance(states, dict)
        prefix = "rng." if rank == 0 else f"rng.{rank}."
        tensors.update({prefix + name: value.cpu() for name, value in states.items()})
    meta = {"state": json.dumps({**state.to_dict(), "scaler": trainer.scaler.state_dict()}),
            "world_size": str(len(gathered))}
    atomic_save(tensors, path, meta)


def load_checkpoint(path: Path, trainer: Resumable, rank: int = 0, world_size: int = 1
                    ) -> RunState:
    """Restore what ``save_checkpoint`` wrote into ``trainer`` (rank ``rank``'s RNG streams);
    returns the run state. A run resumes with the number of ranks it was written by: each
    rank's streams continue, so the resumed steps equal the uninterrupted ones."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    data = json.loads(meta["state"])
    saved_world = int(meta.get("world_size", "1"))
    if saved_world != world_size:
        raise ValueError(f"{path} was written by {saved_world} ranks; resume it with "
                         f"{saved_world}, not {world_size} (or start a new run_dir)")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    trainer.model.load_state_dict(model_state)
    params = dict(trainer.model.named_parameters())
    slots: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            name, _, slot = key[len("optim."):].rpartition(".")
            slots.setdefault(name, {})[slot] = value
    for name, values in slots.items():
        p = params[name]
        # The fused AdamW keeps even its step counters on the parameter's device.
        trainer.optimizer.state[p] = {k: v.to(p.device) for k, v in values.items()}
    prefix = "rng." if rank == 0 else f"rng.{rank}."
    torch.set_rng_state(tensors[prefix + "torch"])
    trainer.generator.set_state(tensors[prefix + "generator"])
    if prefix + "cuda" in tensors:
        torch.cuda.set_rng_state(tensors[prefix + "cuda"], trainer.device)
    trainer.scaler.load_state_dict(data.pop("scaler"))
    return RunState.from_dict(data)


def _read_config_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_checkpoint_model(path: Path) -> tuple[Electric, ModelConfig, dict[str, Any]]:
    """Rebuild an Electric model from a training checkpoint (a safetensors file).

    The ModelConfig comes from the file's metadata key ``model_config`` (JSON) or, failing
    that, from ``config.json`` beside it: either the ModelConfig fields themselves or a
    ``model_config`` / ``model`` entry holding them. Tensors are ``Electric.state_dict()``
    names; the noise model's may be absent (export and verify use only the energy model).

    Returns the model in eval mode, its config, and facts for export: ``tokenizer_path``
    (metadata or config.json ``tokenizer``/``tokenizer_path``, else ``tokenizer.json`` beside
    the checkpoint; None if none is found) and ``training`` (config.json's ``training`` entry,
    else the metadata's ``training`` JSON, else empty).
    """
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    side = _read_config_json(path.parent / "config.json")
    if "model_config" in meta:
        fields = json.loads(meta["model_config"])
    elif isinstance(side.get("model_config"), dict):
        fields = side["model_config"]
    elif isinstance(side.get("model"), dict):
        fields = side["model"]
    elif side:
        fields = side
    else:
        raise ValueError(f"{path} has no model_config metadata and no config.json beside it")
    cfg = ModelConfig.from_dict(fields)

    model = Electric(cfg)
    tensors = load_file(str(path))
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if k.startswith("energy.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path} does not match the config: missing {missing[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")
    model.eval()

    tokenizer = (meta.get("tokenizer_path") or side.get("tokenizer_path") or side.get("tokenizer"))
    if isinstance(tokenizer, str) and not Path(tokenizer).is_absolute():
        tokenizer = str(path.parent / tokenizer)  # relative to the run folder
    if not isinstance(tokenizer, str):
        beside = path.parent / "tokenizer.json"
        tokenizer = str(beside) if beside.is_file() else None
    training = side.get("training")
    if not isinstance(training, dict):
        training = json.loads(meta["training"]) if "training" in meta else {}
    return model, cfg, {"tokenizer_path": tokenizer, "training": training}

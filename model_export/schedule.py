"""The optimiser and its learning-rate schedule: AdamW's parameter groups, the two training
phases and the linear warm-up / decay that each phase restarts.

Apart from the training loop so that a figure such as "the lr at step 900" or "which parameters
are decayed" can be read (and tested) without building a run.
"""

from __future__ import annotations

import torch

from model_export.config import TrainConfig
from model_export.model import Electric

# Parameters that no warm start provides: they train at ``fresh_lr``.
FRESH_PREFIXES = ("energy.head.", "noise.")


def fresh_prefixes(cfg: TrainConfig) -> tuple[str, ...]:
    """Who trains at ``fresh_lr``: the noise towers always, the energy head unless it is read.

    A run continued with ``init_from`` starts with a trained head; at ``fresh_lr`` (20x ``lr``
    in the presets) the re-warmed schedule would move it far from what it learnt, while the
    encoder under it moves at ``lr``. The noise towers keep ``fresh_lr`` either way: q is a
    separate model that has its own pace, and from an artifact it starts from scratch.
    """
    return ("noise.",) if cfg.init_from else FRESH_PREFIXES


def make_optimizer(model: Electric, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with four groups: warm-startable / fresh parameters, with / without weight decay.

    Biases and LayerNorm weights are not decayed (BERT's recipe). Each group keeps its peak lr
    as ``base_lr``, which the schedule scales. Frozen parameters get no optimizer state.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    fresh_names = fresh_prefixes(cfg)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim < 2 or "LayerNorm" in name
        groups.setdefault((name.startswith(fresh_names), no_decay), []).append(p)
    param_groups = [{"params": params, "base_lr": cfg.fresh_lr if fresh else cfg.lr,
                     "lr": 0.0, "weight_decay": 0.0 if no_decay else cfg.weight_decay}
                    for (fresh, no_decay), params in sorted(groups.items())]
    device = next(model.parameters()).device
    # The fused kernel updates all tensors of a group in one pass (CPU and CUDA since torch 2.4).
    return torch.optim.AdamW(param_groups, fused=device.type in ("cpu", "cuda"))


def phase_of(step: int, cfg: TrainConfig) -> str:
    """``noise_pretrain`` for the first ``noise_pretrain_steps`` steps, then ``joint``."""
    return "noise_pretrain" if step < cfg.noise_pretrain_steps else "joint"


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to 1, then linear decay to 0, restarted at the joint phase."""
    if step < cfg.noise_pretrain_steps:
        i, n = step, cfg.noise_pretrain_steps
    else:
        i, n = step - cfg.noise_pretrain_steps, cfg.steps
    warmup = min(cfg.warmup, n)
    if i < warmup:
        return (i + 1) / warmup
    return max(0.0, (n - i) / max(n - warmup, 1))

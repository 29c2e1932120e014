"""Import: a Hugging Face ELECTRA discriminator as a ready-to-serve Electric energy model.

An ELECTRA discriminator (``ElectraForPreTraining``) gives each token a logit for "this token
was replaced by the generator". Its encoder and head have exactly the energy model's layout
(model.py's EnergyHead is ELECTRA's dense + GELU + dense_prediction), so the logit is taken
as the energy unchanged: a higher logit means the token looks replaced, i.e. fits its context
worse, i.e. higher energy. This matches Electric's convention (lower = more plausible). The
logit is not a trained NCE energy, so scores are on a different scale from an Electric model's;
re-ranking weights fitted by ``electric tune`` absorb that.

The noise towers stay at random initialisation: serving only runs the energy model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_export.config import ModelConfig
from model_export.model import Electric
from model_export.warmstart import (
    config_from_bert,
    copy_tensors,
    load_encoder_tensors,
    read_checkpoint,
    read_hf_config,
)

HEAD_PREFIX = "discriminator_predictions."
HEAD_NAMES = ("dense.weight", "dense.bias", "dense_prediction.weight", "dense_prediction.bias")


def import_electra_discriminator(folder: Path) -> tuple[Electric, ModelConfig, dict[str, Any]]:
    """Convert a local ``ElectraForPreTraining`` folder (config.json + model.safetensors).

    Returns the model in eval mode, so that ``model.energy(ids, mask)`` equals the
    discriminator's logits; its config; and facts for the manifest's provenance.
    """
    hf = read_hf_config(folder)
    if hf["model_type"] != "electra":
        raise ValueError(f"{folder}: model_type {hf['model_type']!r}; an ELECTRA discriminator "
                         "(model_type 'electra', ElectraForPreTraining) is needed")
    cfg = config_from_bert(folder)
    tensors = read_checkpoint(folder)
    head = {name: tensors.pop(HEAD_PREFIX + name) for name in HEAD_NAMES
            if HEAD_PREFIX + name in tensors}
    if len(head) != len(HEAD_NAMES):
        missing = [HEAD_PREFIX + n for n in HEAD_NAMES if n not in head]
        raise ValueError(f"{folder} has no complete discriminator head (missing {missing}); "
                         "is it a generator or a bare ElectraModel rather than "
                         "ElectraForPreTraining?")

    model = Electric(cfg)
    # Everything the encoder needs must be there: a random layer would silently corrupt scores.
    report = load_encoder_tensors(model.energy, tensors, str(folder), strict=True)
    copy_tensors(model.energy.head, head, str(folder))
    model.eval()

    facts: dict[str, Any] = {
        "source": folder.name,
        "model_type": hf["model_type"],
        "architectures": hf.get("architectures", []),
        "hidden": cfg.hidden,
        "layers": cfg.layers,
        "heads": cfg.heads,
        "embedding_size": cfg.embedding_size,
        "vocab_size": cfg.vocab_size,
        "tensors_loaded": len(report["loaded"]) + len(head),
        "tensors_unused": report["unexpected"],
    }
    return model, cfg, facts

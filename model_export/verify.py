"""Parity verification: does each ONNX variant of an artifact compute what the model computes?

Two references, the same checks (service/parity.py holds both the checks and the tolerances):

- ``stored``, always: the energies the PyTorch fp32 model computed on the built-in reference
  sentences at export (service/reference_energies.py). This needs neither torch nor the
  checkpoint; the CLI runs service.parity.verify_reference directly when no checkpoint is given.
  An artifact without them (exported before issue #13) fails: re-export it.
- ``pytorch``, with a checkpoint: the live model on ``sentences``, which also shows that the
  artifact was exported from this checkpoint.

Every variant file's sha256 is checked against the manifest before it is run, and the
reference file's too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from model_export.config import ModelConfig
from model_export.model import Electric
from model_export.reference_set import REFERENCE_SENTENCES
from service.artifact import ArtifactError, Manifest, load_manifest
from service.parity import Batch, VerifyReport, check_variants, encode, verify_reference


def _torch_energies(model: Electric, batch: Batch) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return model.energy(torch.from_numpy(batch.ids), torch.from_numpy(batch.mask)).numpy()


def _check_architecture(manifest: Manifest, cfg: ModelConfig) -> None:
    a = manifest.architecture
    ours = (cfg.layers, cfg.hidden, cfg.heads, cfg.vocab_size)
    theirs = (a.layers, a.hidden, a.heads, a.vocab_size)
    if ours != theirs:
        raise ArtifactError(f"the checkpoint has (layers, hidden, heads, vocab) {ours}, "
                            f"the artifact {theirs}: not the model it was exported from")


def verify_artifact(folder: Path, model: Electric | None = None,
                    sentences: list[str] | None = None) -> VerifyReport:
    """Check every variant of ``folder`` against its stored reference energies and, when
    ``model`` is given, against that model run live on ``sentences`` (default: the reference
    sentences). Raises ArtifactError when the artifact has no (intact) reference energies."""
    if model is None and sentences is not None:
        raise ValueError("sentences are for the comparison with a live model; the stored "
                         "reference energies cover their own sentences")
    if model is not None:
        _check_architecture(load_manifest(folder), model.cfg)
    report = verify_reference(folder)
    if model is not None:
        manifest = load_manifest(folder)
        texts = list(REFERENCE_SENTENCES if sentences is None else sentences)
        batch = encode(folder, manifest, texts)
        report.references["pytorch"] = len(texts)
        report.checks += check_variants(folder, manifest, batch, _torch_energies(model, batch),
                                        "pytorch")
    return report


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
    from safetensors import safe_open
    from safetensors.torch import load_file

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

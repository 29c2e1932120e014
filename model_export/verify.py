"""Parity verification: does each ONNX variant of an artifact compute what the model computes?

Two references, the same checks (service/artifact/parity.py holds both the checks and the tolerances):

- ``stored``, always: the energies the PyTorch fp32 model computed on the built-in reference
  sentences at export (service/artifact/reference.py). This needs neither torch nor the
  checkpoint; the CLI runs service.artifact.parity.verify_reference directly when no checkpoint is given.
  An artifact without them (exported by an early build) fails: re-export it.
- ``pytorch``, with a checkpoint: the live model on ``sentences``, which also shows that the
  artifact was exported from this checkpoint.

Every variant file's sha256 is checked against the manifest before it is run, and the
reference file's too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model_export.config import ModelConfig
from model_export.model import Electric
from model_export.reference_set import REFERENCE_SENTENCES
from service.artifact import ArtifactError, Manifest, load_manifest
from service.artifact.parity import Batch, VerifyReport, check_variants, encode, verify_reference


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

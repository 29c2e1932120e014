"""Reference energies: what the PyTorch fp32 model computed at export, kept in the artifact.

``electric export`` and ``electric import`` run the PyTorch model (fp32, eval mode, each
sentence alone so that no padding is involved) on a built-in sentence set
(model_export/reference_set.py) and write the result here, as ``reference.json`` beside the
variants; the manifest records its sha256 (``Manifest.reference``). ``electric verify``
(service/artifact/parity.py) then runs every ONNX variant on the same token ids and compares, with no
checkpoint and no torch: an artifact carries the evidence of what it should compute.

The file is JSON (no pickle), one sentence a line::

    {"format_version": 1, "computed_by": "pytorch 2.x fp32, each sentence alone",
     "sentences": [
    {"text": "...", "ids": [2, ..., 3], "energies": [0.123456789, ...]},
    ...]}

``ids`` are what the service's own tokenizer (service/tokenization.py, ``truncate`` on) makes
of ``text`` with the artifact's tokenizer.json, [CLS] and [SEP] included; ``energies`` has one float32 value per id, written with 9
significant digits, which reads back to the same float32 exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.artifact import ArtifactError, Manifest, ReferenceSpec, sha256_file

REFERENCE_FILE = "reference.json"
REFERENCE_FORMAT = 1


@dataclass(frozen=True)
class ReferenceSentence:
    text: str
    ids: tuple[int, ...]
    """Token ids, special tokens included."""
    energies: NDArray[np.float32]
    """(T,) one energy per id."""

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.energies):
            raise ValueError(f"{self.text!r}: {len(self.ids)} ids, {len(self.energies)} energies")


def write_reference(folder: Path, sentences: Sequence[ReferenceSentence],
                    computed_by: str) -> ReferenceSpec:
    """Write ``folder/reference.json`` and return the manifest entry that pins it."""
    if not sentences:
        raise ValueError("no reference sentences")
    rows = [json.dumps({"text": s.text, "ids": list(s.ids),
                        "energies": [float(f"{e:.9g}") for e in s.energies.tolist()]},
                       ensure_ascii=False, separators=(",", ":")) for s in sentences]
    head = json.dumps({"format_version": REFERENCE_FORMAT, "computed_by": computed_by})[:-1]
    path = folder / REFERENCE_FILE
    path.write_text(f'{head}, "sentences": [\n' + ",\n".join(rows) + "\n]}\n", encoding="utf-8")
    return ReferenceSpec(file=REFERENCE_FILE, sha256=sha256_file(path), sentences=len(sentences))


def load_reference(folder: Path, manifest: Manifest) -> list[ReferenceSentence]:
    """The artifact's reference sentences, after checking the file's sha256 against the manifest.

    Raises :class:`ArtifactError` with a one-line reason when there is none, or it is corrupt.
    """
    spec = manifest.reference
    if spec is None:
        raise ArtifactError(
            f"{folder} has no reference energies ({REFERENCE_FILE}; an artifact from an early "
            "build of `electric export` or `electric import`), so its variants cannot be "
            "verified: re-export it from its checkpoint (or re-import it)")
    path = folder / spec.file
    if not path.is_file():
        raise ArtifactError(f"the manifest pins reference energies {spec.file}, but {folder} "
                            "lacks the file: re-export the artifact")
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise ArtifactError(f"reference energies {spec.file} have sha256 {actual}, the manifest "
                            f"says {spec.sha256}: the file was changed after export")
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("format_version") != REFERENCE_FORMAT:
            raise ValueError(f"format_version {raw.get('format_version')!r}, this build reads "
                             f"{REFERENCE_FORMAT}")
        sentences = [ReferenceSentence(str(s["text"]), tuple(int(i) for i in s["ids"]),
                                       np.asarray(s["energies"], dtype=np.float32))
                     for s in raw["sentences"]]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path} is not a reference energies file: {exc}") from exc
    if len(sentences) != spec.sentences:
        raise ArtifactError(f"{path} holds {len(sentences)} sentences, the manifest says "
                            f"{spec.sentences}")
    return sentences

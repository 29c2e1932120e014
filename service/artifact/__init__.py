"""The artifact folder: the one seam between training (model_export/) and serving (service/).

An artifact is a folder holding ``electric.json`` (this module's :class:`Manifest`), a
Hugging Face ``tokenizers`` file, one ONNX file per variant and (absent only from artifacts of
early builds) ``reference.json``: the PyTorch model's energies on a fixed sentence set, which
``electric verify`` compares every variant with (service/artifact/reference.py). Every ONNX file takes
``input_ids`` and ``attention_mask`` (int64, ``[batch, seq]``, right padded) and returns
``energies`` (float32, ``[batch, seq]``): one energy per position, lower = fits its context.
Special tokens and padding get energies too; consumers drop them.

This module never imports torch: model_export writes manifests through it, service reads them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger("electric.service")

FORMAT_VERSION = 1
MANIFEST_NAME = "electric.json"
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "energies"

VariantName = Literal["fp32", "fp16", "int8"]


class ArtifactError(RuntimeError):
    """An artifact folder that cannot be served: missing, corrupt or inconsistent."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Architecture(_Strict):
    """Shape of the energy model, as far as a consumer needs to know it."""

    kind: str = "electric"
    """``electric`` for NCE-trained models, ``electra-discriminator`` for imported ones."""
    layers: int = Field(gt=0)
    hidden: int = Field(gt=0)
    heads: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_positions: int = Field(gt=2)
    """Longest input in tokens, [CLS] and [SEP] included."""


class SpecialTokens(_Strict):
    cls: str = "[CLS]"
    sep: str = "[SEP]"
    pad: str = "[PAD]"
    unk: str = "[UNK]"
    mask: str = "[MASK]"


class TokenizerSpec(_Strict):
    file: str = "tokenizer.json"
    special_tokens: SpecialTokens = SpecialTokens()
    pad_id: int = Field(ge=0)


class EnergySpec(_Strict):
    convention: Literal["lower_is_better"] = "lower_is_better"
    source: str = "nce"
    """``nce``: E(x)_t of an Electric model; ``discriminator_logit``: an imported ELECTRA logit."""


class Variant(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    providers: list[str]
    """Execution providers the variant is meant for, best first."""


class ReferenceSpec(_Strict):
    """The reference energies file (service/artifact/reference.py has its format)."""

    file: str = "reference.json"
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    sentences: int = Field(gt=0)
    """How many sentences it holds."""


RankPrior = Literal["none", "linear", "log"]


class RerankDefaults(_Strict):
    lm_weight: float = 1.0
    length_bonus: float = 0.0
    rank_prior: RankPrior = "none"
    """The base score the weights were fitted with for lists that carry no scores of their own
    (a beam-ordered n-best list): 0, -rank or -ln(1 + rank). `electric rerank` applies it."""


class Manifest(_Strict):
    format_version: int = FORMAT_VERSION
    name: str
    architecture: Architecture
    tokenizer: TokenizerSpec
    energy: EnergySpec = EnergySpec()
    variants: dict[VariantName, Variant]
    rerank: RerankDefaults = RerankDefaults()
    training: dict[str, Any] = Field(default_factory=dict)
    """How it was made: warm start, corpora, steps, tokens seen, wall time, hardware, losses."""
    evaluation: dict[str, Any] = Field(default_factory=dict)
    """Figures measured on dev sets, as written by the evaluation command."""
    reference: ReferenceSpec | None = None
    """None in artifacts exported before the reference file existed: they load and serve as
    before (serving never reads the file), but ``electric verify`` refuses them."""

    def with_rerank(self, lm_weight: float, length_bonus: float, rank_prior: RankPrior,
                    evaluation: dict[str, Any] | None = None) -> Manifest:
        """This manifest with fitted re-ranking defaults (``electric tune --write-artifact``,
        ``electric eval --update-manifest``): the weights and the prior they were fitted with
        go in together, never one without the others. ``evaluation``: the figures to record
        with them, in place of the old ones."""
        rerank = RerankDefaults(lm_weight=lm_weight, length_bonus=length_bonus,
                                rank_prior=rank_prior)
        return self.model_copy(update={"rerank": rerank,
                                       "evaluation": self.evaluation if evaluation is None
                                       else evaluation})

    def public(self) -> dict[str, Any]:
        """The manifest as GET /v1/model shows it: no file names."""
        data = self.model_dump(mode="json")
        data["variants"] = {name: {"sha256": v.sha256, "providers": v.providers}
                            for name, v in self.variants.items()}
        data["tokenizer"].pop("file", None)
        if data.get("reference"):
            data["reference"].pop("file", None)
        return data


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path


def load_manifest(folder: Path) -> Manifest:
    """Read and validate ``electric.json``; raise :class:`ArtifactError` with the reason."""
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder {folder} does not exist")
    if not path.is_file():
        raise ArtifactError(f"artifact folder {folder} has no {MANIFEST_NAME}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ArtifactError(f"{path} holds a JSON {type(raw).__name__}, not an object")
    _check_format(path, raw.get("format_version"))
    try:
        manifest = Manifest.model_validate(_known_fields(path, raw))
    except ValueError as exc:
        raise ArtifactError(f"{path} does not match the manifest schema: {exc}") from exc
    if not manifest.variants:
        raise ArtifactError(f"{path} lists no variants")
    if not (folder / manifest.tokenizer.file).is_file():
        raise ArtifactError(f"{folder} lacks the tokenizer file {manifest.tokenizer.file}")
    return manifest


def _check_format(path: Path, found: object) -> None:
    """The manifest's format version, which changes only when an older build could not serve
    the artifact correctly; fields added within a version are optional (_known_fields)."""
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise ArtifactError(f"{path}: format_version is {found!r}; an artifact manifest has a "
                            f"whole number from 1 (this build reads {FORMAT_VERSION})")
    if found > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has format_version {found}, written by a newer electric; this build reads "
            f"format {FORMAT_VERSION}: upgrade electric to a release that reads format "
            f"{found} to serve it")
    if found < FORMAT_VERSION:
        raise ArtifactError(f"{path} has format_version {found}, older than this build reads "
                            f"({FORMAT_VERSION}): export it again with this electric")


def _known_fields(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without the fields this build does not know, named in one warning.

    Within a format version a newer build may add optional fields; an older build ignores
    them (and says so) rather than refusing an artifact it can serve. A field it knows with
    a wrong value is still an error."""
    try:
        Manifest.model_validate(raw)
    except ValidationError as exc:
        unknown = [e["loc"] for e in exc.errors() if e["type"] == "extra_forbidden"]
    else:
        return raw
    if not unknown:
        return raw
    cleaned: dict[str, Any] = json.loads(json.dumps(raw))
    for loc in unknown:
        parent: Any = cleaned
        for key in loc[:-1]:
            parent = parent[key]
        del parent[loc[-1]]
    names = ", ".join(".".join(str(k) for k in loc) for loc in unknown)
    logger.warning("%s: ignoring %d field(s) this build does not know (written by a newer "
                   "electric, or misspelt): %s", path, len(unknown), names)
    return cleaned


def verified_variant_path(folder: Path, manifest: Manifest, variant: VariantName) -> Path:
    """The variant's ONNX file, after checking that its sha256 matches the manifest."""
    if variant not in manifest.variants:
        raise ArtifactError(
            f"variant {variant!r} is not in {folder / MANIFEST_NAME}; it has {sorted(manifest.variants)}")
    spec = manifest.variants[variant]
    path = folder / spec.file
    if not path.is_file():
        raise ArtifactError(f"variant {variant!r}: file {spec.file} is missing from {folder}")
    actual = sha256_file(path)
    if actual != spec.sha256:
        raise ArtifactError(
            f"variant {variant!r}: {spec.file} has sha256 {actual}, the manifest says {spec.sha256}")
    return path

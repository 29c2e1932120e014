"""Export an Electric energy model to an ARTIFACT folder (service/artifact/ is the contract).

Steps: trace ``model.energy`` to ONNX with the TorchScript exporter, fuse the graph with ONNX
Runtime's transformer optimizer (optimize.py), derive the fp16 and int8 variants from the fused
graph, copy the tokenizer with padding and truncation off, store the PyTorch model's energies
on the built-in reference sentences (reference_set.py), which ``electric verify`` compares every
variant with, and write ``electric.json`` with a sha256 per file. Only the artifact's own files
land in ``out_dir``; intermediate graphs live in a temporary folder.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from model_export.calibration import MAX_LENGTH, encode_batches
from model_export.config import ModelConfig
from model_export.model import Electric
from model_export.optimize import Int8Scheme, fuse, quantize_int8
from model_export.reference_set import write_reference_energies
from service.artifact import (
    INPUT_NAMES,
    OUTPUT_NAME,
    Architecture,
    EnergySpec,
    Manifest,
    RerankDefaults,
    SpecialTokens,
    TokenizerSpec,
    Variant,
    VariantName,
    sha256_file,
    write_manifest,
)

log = logging.getLogger(__name__)

VARIANT_FILES: dict[VariantName, str] = {
    "fp32": "model.fp32.onnx",
    "fp16": "model.fp16.onnx",
    "int8": "model.int8.onnx",
}
# fp16 kernels for the fused ops exist on CUDA only; the int8 kernels are a CPU path.
VARIANT_PROVIDERS: dict[VariantName, list[str]] = {
    "fp32": ["CPUExecutionProvider"],
    "fp16": ["CUDAExecutionProvider"],
    "int8": ["CPUExecutionProvider"],
}
ENERGY_KINDS = {"nce": "electric", "discriminator_logit": "electra-discriminator"}


def export_onnx(model: Electric, path: Path, *, opset: int = 17) -> Path:
    """Trace ``model.energy`` in eval mode to an ONNX file with dynamic batch and sequence axes.

    The TorchScript exporter (``dynamo=False``) keeps model.py's matmul/softmax attention as a
    node pattern ONNX Runtime's optimizer recognises; the dynamo exporter decomposes it
    differently and the fusion would miss.
    """
    energy = model.energy.eval()
    # Example input: two rows, one right padded, so the trace sees a real mask.
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    ids[1, 5:] = model.cfg.pad_id
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about model.py's shape asserts; they check inputs, not data flow.
        warnings.simplefilter("ignore")
        torch.onnx.export(energy, (ids, mask), str(path), input_names=list(INPUT_NAMES),
                          output_names=[OUTPUT_NAME],
                          dynamic_axes={name: axes for name in (*INPUT_NAMES, OUTPUT_NAME)},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    return path


def write_tokenizer(src: Path, dst: Path, cfg: ModelConfig) -> TokenizerSpec:
    """Copy ``src`` to ``dst`` with padding and truncation off (the service does both itself)."""
    tok = Tokenizer.from_file(str(src))
    tok.no_padding()
    tok.no_truncation()
    specials = SpecialTokens()
    missing = [t for t in specials.model_dump().values() if tok.token_to_id(t) is None]
    if missing:
        raise ValueError(f"tokenizer {src} lacks the special tokens {missing}")
    if tok.get_vocab_size() > cfg.vocab_size:
        raise ValueError(f"tokenizer {src} has {tok.get_vocab_size()} tokens, the model embeds "
                         f"{cfg.vocab_size}")
    pad_id = tok.token_to_id(specials.pad)
    if pad_id != cfg.pad_id:
        raise ValueError(f"tokenizer {src} has [PAD] = {pad_id}, the model config says {cfg.pad_id}")
    tok.save(str(dst))
    return TokenizerSpec(file=dst.name, special_tokens=specials, pad_id=pad_id)


def export_artifact(model: Electric, cfg: ModelConfig, tokenizer_path: Path, out_dir: Path, *,
                    name: str, variants: tuple[VariantName, ...] | list[VariantName] = ("fp32", "int8"),
                    energy_source: str = "nce", training: dict[str, Any] | None = None,
                    evaluation: dict[str, Any] | None = None, rerank: dict[str, Any] | None = None,
                    opset: int = 17, int8_scheme: Int8Scheme = "dynamic",
                    calibration: Sequence[str] | None = None) -> Manifest:
    """Write the artifact folder ``out_dir`` and return its manifest.

    ``energy_source`` is ``nce`` for Electric models and ``discriminator_logit`` for imported
    ELECTRA discriminators. ``rerank`` holds default ``lm_weight`` / ``length_bonus``.
    ``int8_scheme`` picks how the int8 variant is made (optimize.py): ``rowwise`` (batch-
    independent, far closer to fp32; what ``electric export`` uses) calibrates on the sentences
    ``calibration`` (a few hundred of the training text); ``dynamic`` needs none, which is why it
    stays the default of this function.
    """
    unknown = sorted(set(variants) - set(VARIANT_FILES))
    if unknown or not variants:
        raise ValueError(f"variants {list(variants)}: choose from {sorted(VARIANT_FILES)}")
    if energy_source not in ENERGY_KINDS:
        raise ValueError(f"energy_source {energy_source!r}: choose from {sorted(ENERGY_KINDS)}")
    if model.cfg != cfg:
        raise ValueError("the model was built from a different ModelConfig than the one given")
    if "int8" in variants and int8_scheme == "rowwise" and not calibration:
        raise ValueError("int8_scheme 'rowwise' needs calibration sentences (a few hundred lines "
                         "of the training text); int8_scheme 'dynamic' needs none")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in VARIANT_FILES.values():  # files of an earlier export would contradict the manifest
        (out_dir / stale).unlink(missing_ok=True)
    tokenizer = write_tokenizer(tokenizer_path, out_dir / "tokenizer.json", cfg)

    with tempfile.TemporaryDirectory(prefix="electric-export-") as tmp:
        raw = export_onnx(model, Path(tmp) / "model.raw.onnx", opset=opset)
        fused = Path(tmp) / "model.fused.onnx"
        fp16 = out_dir / VARIANT_FILES["fp16"] if "fp16" in variants else None
        counts = fuse(raw, fused, cfg, fp16=fp16)
        log.info("fused ops: %s", counts)
        if "fp32" in variants:
            fused.replace(out_dir / VARIANT_FILES["fp32"])
            fused = out_dir / VARIANT_FILES["fp32"]
        int8: dict[str, Any] = {}
        if "int8" in variants:
            batches = (encode_batches(out_dir / tokenizer.file, calibration,
                                      max_length=min(MAX_LENGTH, cfg.max_positions))
                       if int8_scheme == "rowwise" and calibration else None)
            int8 = quantize_int8(fused, out_dir / VARIANT_FILES["int8"], scheme=int8_scheme,
                                 calibration=batches)
            if batches:
                int8["calibration_sentences"] = len(calibration or ())

    reference = write_reference_energies(model, out_dir, tokenizer.file)
    manifest = Manifest(
        name=name,
        architecture=Architecture(kind=ENERGY_KINDS[energy_source], layers=cfg.layers,
                                  hidden=cfg.hidden, heads=cfg.heads, vocab_size=cfg.vocab_size,
                                  max_positions=cfg.max_positions),
        tokenizer=tokenizer,
        reference=reference,
        energy=EnergySpec(source=energy_source),
        variants={v: Variant(file=VARIANT_FILES[v], sha256=sha256_file(out_dir / VARIANT_FILES[v]),
                             providers=VARIANT_PROVIDERS[v])
                  for v in VARIANT_FILES if v in variants},
        rerank=RerankDefaults(**(rerank or {})),
        training={**(training or {}), "onnx": {
            "opset": opset, "fused_ops": counts,
            **({"int8": int8} if int8 else {})}},
        evaluation=evaluation or {},
    )
    write_manifest(out_dir, manifest)
    return manifest

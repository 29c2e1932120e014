"""Energy-model weights recovered from an exported artifact, to continue training it.

An artifact (electric.json + ONNX) is what gets shipped and kept; the training checkpoint
behind it is not. To train a shipped model further, its PyTorch weights are read back out of
the ONNX graph: every float initializer is copied, and every int8 weight of the ``rowwise``
scheme (optimize.py) is dequantised, ``W[k, :] = inverse[k] * q[k, :] * scale`` with the
float-kept input channels taken as they are. The result is the function the int8 file
computes, up to its activation rounding; a fp32 variant, when the artifact has one, gives the
trained weights exactly.

Which initializer belongs to which parameter is learnt, not written down: a model of the same
shape with a distinct random value in every parameter is exported and fused by the same code
that made the artifact, and each of its initializers is matched to a parameter by value
(the fused ``Attention`` packs query, key and value side by side). The same export code makes
the same node names, so the artifact's nodes are then read by name. Exports from another
version of the optimizer name nodes differently; that is an error naming the missing node.

The noise towers are not in an artifact (they serve only training): a run continued from an
artifact trains them afresh in its ``noise_pretrain_steps``.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from model_export.config import ModelConfig
from model_export.model import Electric
from service.artifact import load_manifest

# ONNX Runtime's quantize_dynamic ops (the 'dynamic' int8 scheme).
DYNAMIC_INT8_OPS = frozenset({"DynamicQuantizeMatMul", "QAttention", "MatMulInteger",
                              "DynamicQuantizeLinear"})
# Preferred variant to read: fp32 holds the trained weights exactly, int8 a dequantised copy.
VARIANT_ORDER = ("fp32", "int8")


@dataclass(frozen=True)
class Source:
    """Where one fused-graph input comes from: ``names`` concatenated along ``axis``."""

    names: tuple[str, ...]
    transposed: bool
    axis: int = 0
    row: int | None = None
    """Set when the input is one row of a parameter (segment 0's embedding, constant-folded)."""


def is_artifact(folder: Path) -> bool:
    return (folder / "electric.json").is_file()


def artifact_config(folder: Path) -> ModelConfig:
    """The energy model's ModelConfig, from the manifest and the graph's own shapes.

    The manifest records the layers, width and vocabulary; the embedding and feed-forward
    widths and the LayerNorm epsilon are read from the graph. The noise towers are sized as a warm start sizes
    them (a quarter of the width, three layers).
    """
    from model_export.warmstart import noise_heads_for

    manifest = load_manifest(folder)
    arch = manifest.architecture
    graph = onnx.load(str(folder / _variant_file(folder)), load_external_data=False).graph
    eps = next((a.f for n in graph.node if n.op_type in ("LayerNormalization",
                                                          "SkipLayerNormalization")
                for a in n.attribute if a.name == "epsilon"), 1e-12)
    intermediate = next(
        (d for n in graph.node if n.op_type == "BiasGelu"
         for t in graph.initializer if t.name == n.input[1] for d in t.dims), arch.hidden * 4)
    # The token table (float or int8) is the one initializer with a row per vocabulary entry.
    embedding = next((t.dims[1] for t in graph.initializer
                      if len(t.dims) == 2 and t.dims[0] == arch.vocab_size), arch.hidden)
    noise_hidden = max(arch.hidden // 4, 1)
    return ModelConfig(vocab_size=arch.vocab_size, hidden=arch.hidden, layers=arch.layers,
                       heads=arch.heads, intermediate=int(intermediate),
                       embedding_size=int(embedding), max_positions=arch.max_positions,
                       # Stored as float32: 1e-12 reads back as 9.99999996e-13.
                       layer_norm_eps=float(f"{eps:.7g}"),
                       pad_id=manifest.tokenizer.pad_id, noise_hidden=noise_hidden,
                       noise_layers=3, noise_heads=noise_heads_for(noise_hidden))


def _variant_file(folder: Path) -> str:
    variants = load_manifest(folder).variants
    for name in VARIANT_ORDER:
        if name in variants:
            return variants[name].file
    raise ValueError(f"{folder}: none of the variants {VARIANT_ORDER} to read weights from "
                     f"(it has {sorted(variants)})")


def graph_sources(cfg: ModelConfig) -> dict[tuple[str, int], Source]:
    """(fused node name, input index) -> the parameters that input holds, for ``cfg``'s shape."""
    from model_export.export import export_onnx
    from model_export.optimize import fuse

    model = Electric(cfg)
    gen = torch.Generator().manual_seed(0)
    params = {}
    with torch.no_grad():
        for name, p in model.energy.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
            params[name] = p.detach().numpy().copy()
    with tempfile.TemporaryDirectory() as tmp:
        raw, fused = Path(tmp, "raw.onnx"), Path(tmp, "fused.onnx")
        export_onnx(model, raw)
        fuse(raw, fused, cfg)
        graph = onnx.load(str(fused)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    by_bytes = {(p.shape, p.tobytes()): n for n, p in params.items()}
    by_bytes_t = {(p.T.shape, np.ascontiguousarray(p.T).tobytes()): n
                  for n, p in params.items() if p.ndim == 2}
    sources: dict[tuple[str, int], Source] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name not in inits:
                continue
            a = np.ascontiguousarray(inits[name])
            key = (a.shape, a.tobytes())
            if key in by_bytes:
                sources[node.name, i] = Source((by_bytes[key],), False)
            elif key in by_bytes_t:
                sources[node.name, i] = Source((by_bytes_t[key],), True)
            elif (packed := _packed_qkv(a, params)) is not None:
                sources[node.name, i] = packed
            elif (row := _row_of(a, params)) is not None:
                sources[node.name, i] = row
            elif a.dtype.kind == "f" and a.size > 1:
                raise ValueError(f"fused node {node.name} input {i} {name} {a.shape} matches no "
                                 "parameter: this export path is not understood")
    return sources


def _packed_qkv(a: np.ndarray, params: dict[str, np.ndarray]) -> Source | None:
    """The fused Attention's (K, 3D) weight or (3D,) bias: query, key, value side by side."""
    leaf = "weight" if a.ndim == 2 else "bias"
    for name in params:
        if not name.endswith(f"self.query.{leaf}"):
            continue
        stem = name[: -len(f"query.{leaf}")]
        names = tuple(f"{stem}{part}.{leaf}" for part in ("query", "key", "value"))
        parts = [params[n].T if a.ndim == 2 else params[n] for n in names]
        if np.array_equal(np.concatenate(parts, axis=-1), a):
            return Source(names, a.ndim == 2, axis=-1)
    return None


def _row_of(a: np.ndarray, params: dict[str, np.ndarray]) -> Source | None:
    for name, p in params.items():
        if p.ndim == 2 and a.ndim == 1 and p.shape[1] == a.shape[0]:
            hits = np.flatnonzero((p == a).all(axis=1))
            if len(hits):
                return Source((name,), False, row=int(hits[0]))
    return None


def energy_state(folder: Path, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Every parameter of ``Electric(cfg).energy`` read back from the artifact in ``folder``."""
    file = _variant_file(folder)
    graph = onnx.load(str(folder / file)).graph
    dynamic = sorted({n.op_type for n in graph.node} & DYNAMIC_INT8_OPS)
    if dynamic:
        raise ValueError(f"{folder / file} is int8 of the 'dynamic' scheme ({', '.join(dynamic)}), "
                         "whose weights this reader does not dequantise: continue from an "
                         "artifact with an fp32 variant or a 'rowwise' int8 one")
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    fresh = {n: t.numpy().copy() for n, t in Electric(cfg).energy.state_dict().items()}
    state: dict[str, np.ndarray] = {}
    for (node_name, i), src in graph_sources(cfg).items():
        value = _read_input(node_name, i, nodes, inits)
        if value is None:
            raise ValueError(f"{folder}: its graph has no node {node_name!r} (nor a quantised "
                             "form of it): it was exported by another version of the optimizer")
        if src.row is not None:
            # The rest of that table is never read by the graph: it keeps fresh values.
            table = state.setdefault(src.names[0], fresh[src.names[0]])
            table[src.row] = value
            continue
        parts = np.split(value, len(src.names), axis=src.axis)
        for name, part in zip(src.names, parts, strict=True):
            state[name] = part.T if src.transposed else part
    missing = sorted(set(fresh) - set(state))
    if missing:
        raise ValueError(f"{folder}: no value found for {missing}")
    return {n: torch.from_numpy(np.array(v, dtype=np.float32)) for n, v in state.items()}


def _read_input(node_name: str, i: int, nodes: dict[str, onnx.NodeProto],
                inits: dict[str, np.ndarray]) -> np.ndarray | None:
    """The value a fused node's i-th input has in an exported (maybe int8) graph."""
    if node_name in nodes and nodes[node_name].input[i] in inits:
        return inits[nodes[node_name].input[i]]
    rowwise = f"{node_name}_rowwise"
    if i == 1 and f"{rowwise}/weight" in inits:  # a MatMul's or Attention's weight
        return _dequantised(rowwise, inits)
    if i == 2 and f"{rowwise}/attention" in nodes:  # Attention's packed bias moved to MHA
        return inits[nodes[f"{rowwise}/attention"].input[3]]
    # The word embeddings: int8 rows and one scale per row (quantize_embedding_rows).
    int8 = f"{node_name}_int8"
    if i == 0 and node_name not in nodes and int8 in nodes:
        table = nodes[int8].input[0]
        scale = nodes[f"{node_name}_scale"].input[0]
        return inits[table].astype(np.float32) * inits[scale]
    return None


def _dequantised(prefix: str, inits: dict[str, np.ndarray]) -> np.ndarray:
    """(K, N) float weight of one rowwise-quantised MatMul."""
    q = inits[f"{prefix}/weight"].astype(np.float32)
    w = q * inits[f"{prefix}/weight_scale"][None, :]
    inverse = inits.get(f"{prefix}/inverse")
    if inverse is not None:
        w = w * inverse[:, None]
    channels = inits.get(f"{prefix}/float_channels")
    if channels is not None:
        w[channels] = inits[f"{prefix}/float_weight"]
    return w


def electric_from_artifact(folder: Path, *, dropout: float = 0.0, seed: int = 0
                           ) -> tuple[Electric, ModelConfig]:
    """An Electric model whose energy model is the artifact's; fresh, seeded noise towers."""
    cfg = dataclasses.replace(artifact_config(folder), dropout=dropout)
    state = energy_state(folder, cfg)
    torch.manual_seed(seed)
    model = Electric(cfg)
    model.energy.load_state_dict(state)
    return model, cfg

"""ONNX graph optimisation: ONNX Runtime transformer fusion, then fp16 and int8 variants.

The exported graph is a plain BERT-shaped encoder (model.py writes attention out as matmul,
additive mask and softmax), so ONNX Runtime's *offline* transformer optimizer
(``onnxruntime.transformers.optimizer``, model type ``bert``) rewrites it into its contrib ops:
``Attention``, ``SkipLayerNormalization``, ``BiasGelu``. Only the python fusions run
(``opt_level=0``); ONNX Runtime's own graph optimisations happen when a session loads the file,
so the saved graph stays independent of the machine that wrote it.

The mask format matters. ``Attention`` can take the mask as "number of real tokens" (which
assumes right padding and breaks for anything else) or raw, a 1/0 ``[B, T]`` tensor it turns
into the same additive bias model.py uses (-10000 for masked keys). We ask for the raw mask: it is exactly the PyTorch
semantics for any mask.

The int8 variant comes in two schemes (:func:`quantize_int8`): ``rowwise``, calibrated, one
activation scale per token row, so a sentence's score never depends on its batch; and ONNX
Runtime's ``dynamic`` one, one activation range per batch tensor, no calibration text needed.
docs/EXPORT.md has the measurements that chose ``rowwise``.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from model_export.calibration import NodePlan, plan_node, record
from model_export.config import ModelConfig
from service.artifact import INPUT_NAMES

if TYPE_CHECKING:
    from onnxruntime.transformers.fusion_options import FusionOptions

log = logging.getLogger(__name__)

# Fused ops worth reporting; the rest of the optimizer's statistics are always zero for BERT.
FUSED_OPS = ("Attention", "MultiHeadAttention", "EmbedLayerNormalization",
             "SkipLayerNormalization", "LayerNormalization", "BiasGelu", "FastGelu", "Gelu")


Int8Scheme = Literal["rowwise", "dynamic"]

# How quantize_int8 stores the int8 variant, recorded in the manifest (docs/EXPORT.md compares).
INT8_SCHEMES: dict[str, dict[str, str]] = {
    "rowwise": {
        "weights": "7-bit (-63..63) symmetric per output channel, GPTQ-rounded on calibration "
                   "text; no 16-bit pair sum can saturate, so every CPU computes the same",
        "activations": "uint8 with one scale per token row, measured at run time (batch-independent)",
        "calibrated": "per MatMul: SmoothQuant factors, zero point, input channels kept float",
        "float": "energy head",
        "word_embeddings": "int8 symmetric, one scale per row",
    },
    "dynamic": {
        "weights": "7-bit symmetric (reduce_range), per output channel (MatMul, Attention)",
        "activations": "uint8, range measured per batch at run time (dynamic)",
        "word_embeddings": "int8 symmetric, one scale per row",
    },
}


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How many nodes of each op type the graph holds."""
    return dict(Counter(node.op_type for node in model.graph.node))


def _fusion_options() -> FusionOptions:
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    # 1/0 mask straight into Attention: correct for any padding layout, not only right padding.
    options.use_raw_attention_mask(True)
    # Keep exact erf GELU: the tanh approximation would cost parity with PyTorch.
    options.enable_gelu_approximation = False
    return options


def fuse(src: Path, dst: Path, cfg: ModelConfig, *, fp16: Path | None = None) -> dict[str, int]:
    """Fuse the exported graph ``src`` into ``dst``; also write an fp16 copy to ``fp16`` if asked.

    Returns the fused op counts (``Attention``: one per layer when fusion worked).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    # The optimizer logs every fusion at INFO and warns about things a BERT graph never has.
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    model = optimize_model(str(src), model_type="bert", num_heads=cfg.heads,
                           hidden_size=cfg.hidden, optimization_options=_fusion_options(),
                           opt_level=0, use_gpu=False)
    counts = op_counts(model.model)
    fused = {op: counts.get(op, 0) for op in FUSED_OPS if counts.get(op, 0)}
    if fused.get("Attention", 0) != cfg.layers:
        log.warning("fused %d Attention nodes for %d layers; the graph runs unfused there",
                    fused.get("Attention", 0), cfg.layers)
    model.save_model_to_file(str(dst))
    if fp16 is not None:
        # keep_io_types: the service feeds int64 ids and reads float32 energies for every variant.
        model.convert_float_to_float16(keep_io_types=True)
        model.save_model_to_file(str(fp16))
    return fused


def quantize_embedding_rows(model: onnx.ModelProto, ids_input: str = INPUT_NAMES[0]) -> int:
    """Store each token-embedding table int8 with one scale per row; returns how many tables.

    ``quantize_dynamic`` quantises a ``Gather`` table with a single scale for all 30k rows, so
    rare tokens with large entries set the step for everyone; on MiniLM that cost more score
    correlation than any encoder block. One symmetric scale per row keeps the int8 size and
    costs one extra Gather of scales, a Cast and a Mul: ``E[id] = q[id] * scale[id]``.
    """
    graph = model.graph
    tables = {t.name: t for t in graph.initializer}
    replaced = 0
    for node in list(graph.node):
        if not (node.op_type == "Gather" and node.input[1] == ids_input and node.input[0] in tables):
            continue
        name, out = node.input[0], node.output[0]
        weight = numpy_helper.to_array(tables[name])  # (V, E)
        scale = np.abs(weight).max(axis=1, keepdims=True) / 127.0  # (V, 1)
        scale[scale == 0] = 1.0  # an all-zero row, e.g. [PAD]'s padding_idx row
        q = np.clip(np.round(weight / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(tables[name])
        graph.initializer.extend([numpy_helper.from_array(q, f"{name}_int8"),
                                  numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale")])
        at = list(graph.node).index(node)
        graph.node.remove(node)
        new = [
            helper.make_node("Gather", [f"{name}_int8", ids_input], [f"{out}_int8"], name=f"{node.name}_int8"),
            helper.make_node("Gather", [f"{name}_scale", ids_input], [f"{out}_scale"], name=f"{node.name}_scale"),
            helper.make_node("Cast", [f"{out}_int8"], [f"{out}_float"], to=TensorProto.FLOAT,
                             name=f"{node.name}_cast"),
            helper.make_node("Mul", [f"{out}_float", f"{out}_scale"], [out], name=f"{node.name}_dequant"),
        ]
        for offset, n in enumerate(new):
            graph.node.insert(at + offset, n)
        replaced += 1
    return replaced


def quantize_int8(src: Path, dst: Path, *, scheme: Int8Scheme = "dynamic",
                  calibration: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
                  per_channel: bool = True) -> dict[str, Any]:
    """Write the int8 variant of the fused graph ``src`` to ``dst``; returns the manifest's
    description of it (``INT8_SCHEMES[scheme]`` plus what calibration decided).

    ``rowwise`` (:func:`quantize_rowwise`) needs ``calibration``: (ids, mask) batches of real
    text. ``dynamic`` needs none. Both store the word embedding with per-row scales
    (:func:`quantize_embedding_rows`); position embeddings (a few hundred rows) stay float.
    """
    if scheme not in INT8_SCHEMES:
        raise ValueError(f"int8 scheme {scheme!r}: choose from {sorted(INT8_SCHEMES)}")
    facts: dict[str, Any] = {}
    if scheme == "rowwise":
        if not calibration:
            raise ValueError("the rowwise int8 scheme needs calibration batches (real text); "
                             "the dynamic scheme needs none")
        model = onnx.load(str(src))
        facts = quantize_rowwise(model, calibration)
    else:
        model = _quantize_dynamic(src, per_channel=per_channel)
    quantize_embedding_rows(model)
    onnx.save(model, str(dst))
    log.info("int8 (%s) ops: %s", scheme, op_counts(model))
    return {"scheme": scheme, **INT8_SCHEMES[scheme], **facts}


def _quantize_dynamic(src: Path, *, per_channel: bool) -> onnx.ModelProto:
    """ONNX Runtime's dynamic quantisation: weights int8 per output channel, activations uint8
    with one range per batch tensor, measured at run time.

    ``reduce_range`` stores 7-bit weights: x86 CPUs without VNNI add pairs of uint8 x int8
    products into a saturating int16 (calibration.WEIGHT_MAX), and 8-bit weights would give them
    other answers than VNNI CPUs. Per-channel weights cost no speed here and were clearly more
    accurate than per-tensor on MiniLM (score correlation 0.992 against 0.978).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="electric-quant-") as tmp:
        # The quantiser needs every tensor's type; ONNX's own shape inference stops at the
        # contrib ops (Attention...), ORT's symbolic shape inference knows them.
        typed, quantized = Path(tmp) / "typed.onnx", Path(tmp) / "quantized.onnx"
        quant_pre_process(str(src), str(typed), skip_optimization=True, auto_merge=True)
        quantize_dynamic(str(typed), str(quantized), weight_type=QuantType.QInt8,
                         per_channel=per_channel, reduce_range=True,
                         op_types_to_quantize=["MatMul", "Attention"],
                         extra_options={"MatMulConstBOnly": True})
        return onnx.load(str(quantized))


def quantizable_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """``MatMul`` / ``Attention`` nodes with a constant weight, except the energy head.

    The head (the MatMuls after the encoder's last ``SkipLayerNormalization``) stays float: its
    output is the energy itself, so its error lands on every score undamped, and it is ~3% of
    the compute.
    """
    weights = {t.name for t in model.graph.initializer}
    nodes = list(model.graph.node)
    skips = [i for i, n in enumerate(nodes) if n.op_type == "SkipLayerNormalization"]
    head_from = skips[-1] + 1 if skips else len(nodes)
    return [n for n in nodes[:head_from]
            if n.op_type in ("MatMul", "Attention") and len(n.input) > 1 and n.input[1] in weights]


def quantize_rowwise(model: onnx.ModelProto,
                     calibration: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Row-wise int8, in place: every token's activation row is quantised with its own scale.

    A row's scale depends on that row only, so a sentence scores the same alone or in any batch;
    dynamic quantisation takes one range over the whole (B, T, K) tensor, so a single outlier
    token coarsens every other sentence in the batch; static (calibrated) per-tensor ranges are
    batch-independent but measured no closer to fp32 than dynamic ones (docs/EXPORT.md).
    calibration.py decides each node's smoothing, zero point, float channels and weight
    rounding; here the graph computes, per node (K inputs, N outputs)::

        xs = x * inverse                                 # (B, T, K) smoothing, outliers -> 0
        scale = max(max_k xs / (255 - Z), -min_k xs / Z)  # (B, T, 1) one per token row
        q = QuantizeLinear(xs, scale, Z)                 # uint8, per row (axis 0 of (B*T, K))
        y = MatMulIntegerToFloat(q, Wq, 1, w_scale, Z) * scale  [+ x[..., idx] @ W_float]

    ``Attention`` nodes become the same projection followed by ``MultiHeadAttention`` on the
    split Q, K, V (``Attention`` only accepts a per-tensor input scale). Returns the facts the
    manifest records.
    """
    nodes = quantizable_nodes(model)
    for n in nodes:
        if n.op_type == "Attention" and not _plain_attention(n):
            raise ValueError(f"{n.name}: only Attention with num_heads/scale/mask_filter_value "
                             "and at most a 2-D mask is supported by the rowwise scheme")
    acts = record(model, [n.input[0] for n in nodes], calibration)
    weights = {t.name: t for t in model.graph.initializer}
    replace: dict[str, tuple[list[onnx.NodeProto], list[onnx.TensorProto]]] = {}
    plans: dict[str, NodePlan] = {}
    for n in nodes:
        plan = plan_node(acts[n.input[0]], numpy_helper.to_array(weights[n.input[1]]))
        plans[n.name] = plan
        replace[n.name] = _rowwise_nodes(n, plan, _opset(model))
    graph = model.graph
    new_nodes: list[onnx.NodeProto] = []
    for n in graph.node:
        if n.name in replace:
            new_nodes += replace[n.name][0]
            graph.initializer.extend(replace[n.name][1])
        else:
            new_nodes.append(n)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    for name, p in plans.items():
        log.debug("%s: alpha %s, zero point %d, %d float channels, SQNR %.1f dB", name, p.alpha,
                  p.zero_point, len(p.outliers), p.sqnr_db)
    return {"calibration_tokens": int(sum(m.sum() for _, m in calibration)),
            "nodes": len(plans), "smoothed": sum(p.smoothed for p in plans.values()),
            "with_float_channels": sum(len(p.outliers) > 0 for p in plans.values()),
            "min_sqnr_db": round(float(min(p.sqnr_db for p in plans.values())), 1)}


def _opset(model: onnx.ModelProto) -> int:
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def _plain_attention(node: onnx.NodeProto) -> bool:
    attrs = {a.name for a in node.attribute}
    return attrs <= {"num_heads", "scale", "mask_filter_value"} and len(node.input) <= 4


def _rowwise_nodes(node: onnx.NodeProto, plan: NodePlan, opset: int
                   ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers that replace ``node`` (see :func:`quantize_rowwise`)."""
    p = f"{node.name}_rowwise"
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: Any, dtype: Any = np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), f"{p}/{name}"))
        return f"{p}/{name}"

    def op(op_type: str, inputs: list[str], name: str, **attrs: Any) -> str:
        domain = "com.microsoft" if op_type in ("MatMulIntegerToFloat", "MultiHeadAttention") else ""
        nodes.append(helper.make_node(op_type, inputs, [f"{p}/{name}"], name=f"{p}/{name}",
                                      domain=domain, **attrs))
        return f"{p}/{name}"

    def reduce(op_type: str, x: str, name: str) -> str:
        # Opset 18 moved ReduceMax/ReduceMin's axes from an attribute to an input.
        if opset >= 18:
            return op(op_type, [x, const("last_axis", [-1], np.int64)], name, keepdims=1)
        return op(op_type, [x], name, axes=[-1], keepdims=1)

    x = node.input[0]
    K = plan.weight.shape[0]
    Z = plan.zero_point
    xs = x if np.all(plan.inverse == 1) else op("Mul", [x, const("inverse", plan.inverse)], "xs")
    hi = op("Mul", [reduce("ReduceMax", xs, "max"), const("inv_hi", 1 / (255 - Z))], "hi")
    lo = op("Mul", [reduce("ReduceMin", xs, "min"), const("inv_lo", -1 / Z)], "lo")
    scale = op("Max", [hi, lo, const("eps", 1e-12)], "scale")  # (B, T, 1)
    rows = op("Reshape", [scale, const("flat", [-1], np.int64)], "row_scale")  # (B*T,)
    zero = const("zero_point", Z, np.uint8)
    row_zero = op("Expand", [zero, op("Shape", [rows], "rows")], "row_zero_point")
    x2 = op("Reshape", [xs, const("rows_by_k", [-1, K], np.int64)], "x2")  # (B*T, K)
    q2 = op("QuantizeLinear", [x2, rows, row_zero], "q2", axis=0)
    q = op("Reshape", [q2, op("Shape", [xs], "x_shape")], "q")  # (B, T, K) uint8
    f = op("MatMulIntegerToFloat", [q, const("weight", plan.weight, np.int8), const("one", 1.0),
                                    const("weight_scale", plan.weight_scale), zero], "f")
    y = op("Mul", [f, scale], "y")  # (B, T, N)
    if len(plan.outliers):
        kept = op("Gather", [x, const("float_channels", plan.outliers, np.int64)], "x_float",
                  axis=-1)
        y = op("Add", [y, op("MatMul", [kept, const("float_weight", plan.outlier_weight)],
                             "y_float")], "y_sum")
    if node.op_type == "MatMul":
        nodes[-1].output[0] = node.output[0]
        return nodes, inits
    # Attention: split the (B, T, 3D) projection and attend; bias and mask as the fused node had.
    D = plan.weight.shape[1] // 3
    split = helper.make_node("Split", [y, const("qkv_sizes", [D, D, D], np.int64)],
                             [f"{p}/query", f"{p}/key", f"{p}/value"], name=f"{p}/split", axis=-1)
    mha = helper.make_node("MultiHeadAttention",
                           [f"{p}/query", f"{p}/key", f"{p}/value", node.input[2],
                            *(node.input[3:4] if len(node.input) > 3 and node.input[3] else [])],
                           list(node.output), name=f"{p}/attention", domain="com.microsoft")
    mha.attribute.extend(node.attribute)
    return nodes + [split, mha], inits

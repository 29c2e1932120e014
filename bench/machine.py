"""What the benchmarks ran on, and the matmul peak that model FLOP/s is compared against."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from bench.timing import best_seconds
from service.cpu import describe_cpu


def describe() -> dict[str, Any]:
    """Machine facts for a results file: CPU, cores, load, library versions."""
    import onnxruntime as ort

    facts: dict[str, Any] = {
        **describe_cpu(),
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "ort_providers": ort.get_available_providers(),
    }
    try:
        import torch

        facts["torch"] = torch.__version__
    except ImportError:
        pass
    return facts


REPOSITORY = Path(__file__).resolve().parent.parent


def recorded_path(path: Path) -> str:
    """``path`` as a results file records it: relative to the repository (``../shared/...`` for
    a folder beside it), never absolute, so that results name no machine's layout."""
    return Path(os.path.relpath(path.resolve(), REPOSITORY)).as_posix()


def recorded_tree(root: Path) -> str:
    """The source tree a benchmark started the service from: ``.`` for this checkout, else the
    commit of the checkout at ``root`` (``git:abc1234``), else its recorded path."""
    if root.resolve() == REPOSITORY:
        return "."
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return recorded_path(root)
    return f"git:{head.stdout.strip()}"


def ort_matmul_peak(threads: int, n: int = 1024, int8: bool = False) -> float:
    """GFLOP/s (or GOP/s for int8) of one square ONNX Runtime MatMul on this machine.

    The same runtime and thread pool as the model, so the ratio "model GFLOP/s / peak" says how
    much of what ORT can get out of the cores the model gets.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if int8:
        node = helper.make_node("MatMulInteger", ["a", "b"], ["c"])
        a_type, c_type = TensorProto.UINT8, TensorProto.INT32
        b_type = TensorProto.INT8
    else:
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        a_type = b_type = c_type = TensorProto.FLOAT
    graph = helper.make_graph(
        [node], "peak",
        [helper.make_tensor_value_info("a", a_type, [n, n]),
         helper.make_tensor_value_info("b", b_type, [n, n])],
        [helper.make_tensor_value_info("c", c_type, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray]
    if int8:
        feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8),
                 "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    else:
        feeds = {"a": rng.standard_normal((n, n), dtype=np.float32),
                 "b": rng.standard_normal((n, n), dtype=np.float32)}
    seconds = best_seconds(lambda: session.run(None, feeds))
    return 2 * n**3 / seconds / 1e9


def encoder_flops_per_token(layers: int, hidden: int, intermediate: int, length: int) -> float:
    """Forward FLOPs per (padded) token of a BERT-style encoder plus the energy head.

    Per layer: Q, K, V and output projections (4 x 2H^2), the two FFN matmuls (2 x 2HI), and
    attention scores plus the weighted sum of values (2 x 2TH). Embedding lookups, layer norms
    and softmax are left out: they are memory-bound and small next to the matmuls.
    """
    per_layer = 8 * hidden**2 + 4 * hidden * intermediate + 4 * length * hidden
    head = 2 * hidden**2 + 2 * hidden
    return float(layers * per_layer + head)

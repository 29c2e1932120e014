"""``electric serve`` with the ONNX call taken out: the stack alone, for ``electric bench service
--null-engine``.

Everything a request meets is the service's own (HTTP parsing, middleware, validation,
tokenization, batching, scoring, serialisation); only the engine is :class:`NullEngine`, which
answers every batch with zero energies of the shape and dtype ``OnnxEngine.run`` returns. What
the server then spends per request is what the stack costs, without the model. The product has
no such mode: this module starts the service through ``service.server.run``'s ``engine``
parameter, with the settings from ``ELECTRIC_*`` as ``electric serve`` reads them.

    ELECTRIC_ARTIFACT=models/electric-minilm python -m bench.null_server
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from service.engine import cpu_runs
from service.providers import CPU
from service.server import run
from service.settings import load_settings


class NullEngine:
    """An :class:`~service.engine.EnergyEngine` that costs nothing: zeros, (B, T) float32.
    ``parallel_runs``: the batches at once the real engine would take on this machine."""

    def __init__(self, parallel_runs: int = 1):
        self.parallel_runs = parallel_runs

    @property
    def variant(self) -> str:
        return "null"

    @property
    def providers(self) -> list[str]:
        return [CPU]  # the CPU batching limits, as the real engine gets on this machine

    def run(self, ids: NDArray[np.int64], mask: NDArray[np.int64]) -> NDArray[np.float32]:
        assert ids.shape == mask.shape and ids.ndim == 2
        return np.zeros(ids.shape, dtype=np.float32)  # (B, T)


if __name__ == "__main__":
    settings = load_settings()
    runs, _ = cpu_runs(settings.parallel_batches, settings.intra_op_threads)
    run(settings, engine=NullEngine(runs))

"""Electric: the ``electric`` command line (electric/cli.py) and the Python API.

    from electric import Scorer

    scorer = Scorer.load()  # the embedded model; Scorer.load("models/my-model", "fp32")
    results = scorer.score(["the cat sat on the mat"])
    ranked = scorer.rerank(["i scream for ice cream", "eye scream four ice cream"])

:class:`Scorer` (service/scorer.py) scores in this process, as ``electric score`` does; its
results are :class:`Scored` and :class:`Ranked`, the re-ranking defaults :class:`Weights`
(service/scoring.py). docs/PYTHON.md has the details.

The names load on first use (PEP 562 ``__getattr__``): importing the package, as the
``electric`` entry point does, must not load ONNX Runtime, so that cli.py can report a missing
runtime in one line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.scorer import Scorer
    from service.scoring import Ranked, Scored, Weights

_EXPORTS = {"Scorer": "service.scorer", "Scored": "service.scoring",
            "Ranked": "service.scoring", "Weights": "service.scoring"}

__all__ = ["Ranked", "Scored", "Scorer", "Weights"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next look-up is a plain one
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

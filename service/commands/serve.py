"""``electric serve``: the HTTP service, settings from ELECTRIC_* variables and a few flags."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.settings import load_settings


def _serve(args: argparse.Namespace) -> int:
    from service.server import run

    overrides: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for key, field in (("artifact", "artifact"), ("variant", "variant"), ("host", "host"),
                       ("port", "port"), ("threads", "intra_op_threads")):
        value = getattr(args, key)
        if value is not None:
            overrides[field] = value
            labels[field] = f"--{key}"
    run(load_settings(overrides, labels))
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the HTTP service (settings from ELECTRIC_* variables)")
    p.add_argument("--artifact", type=Path, help="artifact folder (default: the embedded model)")
    p.add_argument("--variant", choices=["auto", "fp32", "fp16", "int8"])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.set_defaults(func=_serve)

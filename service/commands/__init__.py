"""The service wing's commands (serve, score, rerank, tune, bulk), registered by
electric/cli.py."""

from __future__ import annotations

import importlib
from typing import Any

COMMANDS = ("serve", "score", "rerank", "tune", "bulk")


def register(sub: Any) -> None:
    """Add the commands to the ``electric`` subparsers ``sub``. Each module is imported here,
    when the parser is built, so that a missing ONNX Runtime ends in the CLI's one-line
    message."""
    for name in COMMANDS:
        importlib.import_module(f"service.commands.{name}").register(sub)

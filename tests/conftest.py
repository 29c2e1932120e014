"""Shared fixtures: a tiny tokenizer, sentences and an exported tiny artifact (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny_models import SENTENCES, build_tiny_electric, build_tiny_tokenizer


@pytest.fixture(scope="session")
def tiny_tokenizer_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    build_tiny_tokenizer().save(str(path))
    return path


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)


@pytest.fixture(scope="session")
def tiny_artifact(tiny_tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artifact folder (fp32 + int8) exported from :func:`build_tiny_electric`, name "tiny-test"."""
    from model_export.export import export_artifact

    model = build_tiny_electric()
    folder = tmp_path_factory.mktemp("artifact") / "tiny-test"
    export_artifact(model, model.cfg, tiny_tokenizer_path, folder, name="tiny-test",
                    variants=("fp32", "int8"))
    return folder

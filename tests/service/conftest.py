"""Fixtures for the service tests; the helpers they use live in harness.py."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from harness import FAKE_MAX_POSITIONS

from service.artifact import Architecture, Manifest, TokenizerSpec, Variant, sha256_file
from service.settings import Settings


@pytest.fixture(scope="session")
def fake_artifact(tiny_tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest and tokenizer with a placeholder model file: the fake engine replaces it."""
    folder = tmp_path_factory.mktemp("fake-artifact")
    shutil.copy(tiny_tokenizer_path, folder / "tokenizer.json")
    (folder / "model.onnx").write_bytes(b"not a model; tests inject an engine")
    manifest = Manifest(
        name="fake", tokenizer=TokenizerSpec(pad_id=0),
        architecture=Architecture(layers=1, hidden=8, heads=1, vocab_size=214,
                                  max_positions=FAKE_MAX_POSITIONS),
        variants={"fp32": Variant(file="model.onnx", sha256=sha256_file(folder / "model.onnx"),
                                  providers=["CPUExecutionProvider"])})
    (folder / "electric.json").write_text(json.dumps(manifest.model_dump(mode="json")))
    return folder


@pytest.fixture
def fake_settings(fake_artifact: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return Settings(**{"artifact": fake_artifact, "warmup": False, **overrides})

    return make

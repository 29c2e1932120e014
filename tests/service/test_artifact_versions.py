"""Artifacts written by other versions: a newer format is refused with the version it needs;
optional fields a newer build added are ignored with one warning; a wrong known field is still
an error."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from service.artifact import FORMAT_VERSION, MANIFEST_NAME, ArtifactError, load_manifest


def _copy(tiny_artifact: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, folder)
    return folder, json.loads((folder / MANIFEST_NAME).read_text())


def _write(folder: Path, raw: object) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(raw))


def test_a_newer_format_names_the_version_it_needs(tiny_artifact: Path, tmp_path: Path) -> None:
    folder, raw = _copy(tiny_artifact, tmp_path)
    raw["format_version"] = FORMAT_VERSION + 1
    _write(folder, raw)
    with pytest.raises(ArtifactError, match=rf"format_version {FORMAT_VERSION + 1}, written by a "
                                            rf"newer electric; this build reads format "
                                            rf"{FORMAT_VERSION}: upgrade electric"):
        load_manifest(folder)


@pytest.mark.parametrize("value", [None, "1", 0, True, 1.5])
def test_a_missing_or_odd_format_version_is_refused(tiny_artifact: Path, tmp_path: Path,
                                                    value: object) -> None:
    folder, raw = _copy(tiny_artifact, tmp_path)
    if value is None:
        del raw["format_version"]
    else:
        raw["format_version"] = value
    _write(folder, raw)
    with pytest.raises(ArtifactError, match="format_version is .*whole number from 1"):
        load_manifest(folder)


def test_a_manifest_that_is_not_an_object_is_refused(tiny_artifact: Path,
                                                     tmp_path: Path) -> None:
    folder, _ = _copy(tiny_artifact, tmp_path)
    _write(folder, [1, 2])
    with pytest.raises(ArtifactError, match="holds a JSON list, not an object"):
        load_manifest(folder)


def test_unknown_fields_are_ignored_with_one_warning(tiny_artifact: Path, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    folder, raw = _copy(tiny_artifact, tmp_path)
    expected = load_manifest(folder)
    raw["serving_hints"] = {"batch": 32}
    raw["architecture"]["rotary"] = False
    next(iter(raw["variants"].values()))["calibration"] = "minmax"
    _write(folder, raw)
    with caplog.at_level(logging.WARNING, logger="electric.service"):
        manifest = load_manifest(folder)
    assert manifest == expected
    (record,) = [r for r in caplog.records if "does not know" in r.getMessage()]
    message = record.getMessage()
    assert "ignoring 3 field(s)" in message
    for name in ("serving_hints", "architecture.rotary", "calibration"):
        assert name in message


def test_a_wrong_known_field_is_still_an_error(tiny_artifact: Path, tmp_path: Path) -> None:
    folder, raw = _copy(tiny_artifact, tmp_path)
    raw["extra_thing"] = 1
    raw["architecture"]["layers"] = -2
    _write(folder, raw)
    with pytest.raises(ArtifactError, match="(?s)does not match the manifest schema.*architecture.layers"):
        load_manifest(folder)

"""``electric tune --plot`` and ``electric eval --plot``: PNGs from the commands themselves, on the
tiny exported model, and the one-line install hint where matplotlib is missing."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from electric.cli import main

LOCAL = ["--variant", "fp32", "--threads", "1"]
REFS = ["the cat sat on the mat", "a dog ran to the old house", "she reads a good book today",
        "the big red car is not new", "he said that the bird sat in the tree"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) after checking the file is a PNG of a sane size."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR", data[:16]
    assert 5_000 < len(data) < 2_000_000, len(data)
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def pixels_like(path: Path, rgb: tuple[float, float, float], tolerance: float = 0.08) -> int:
    """How many pixels of the PNG have (about) this colour."""
    from matplotlib.image import imread

    image = imread(str(path))[..., :3]  # (H, W, 3) in [0, 1]
    return int((np.abs(image - np.asarray(rgb)) < tolerance).all(axis=-1).sum())


def dev_set(tmp_path: Path) -> Path:
    path = tmp_path / "dev.jsonl"
    rows = [{"id": str(i), "reference": ref,
             "hypotheses": [ref.replace("the", "a"), ref, " ".join(ref.split()[:-1])]}
            for i, ref in enumerate(REFS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def zorro_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "eval"
    folder.mkdir()
    pairs = [{"paradigm": p, "pair": j, "sentence_good": f"the {p} cat sat {j}",
              "sentence_bad": f"cat the {p} sat {j}"}
             for p in ("agreement", "binding", "ellipsis", "island") for j in range(6)]
    (folder / "minimal_pairs_zorro.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in pairs))
    return folder


def test_tune_plot_draws_the_grid_with_the_choice_marked(
        tmp_path: Path, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "grid.png"
    assert main(["tune", "-f", "jsonl", str(dev_set(tmp_path)), "--rank-prior", "log",
                 "--plot", str(plot), "--artifact", str(tiny_artifact), *LOCAL]) == 0
    assert f"wrote {plot} (the grid as a heat map)" in capsys.readouterr().out
    assert png_size(plot) == (800, 600)
    assert pixels_like(plot, (1.0, 0.0, 0.0)) > 20  # the red cross on the chosen point


def test_tune_plot_of_an_explicit_grid(tmp_path: Path, tiny_artifact: Path) -> None:
    plot = tmp_path / "small.png"
    assert main(["tune", "-f", "jsonl", str(dev_set(tmp_path)), "--lm-weights", "0,0.5,1",
                 "--length-bonuses", "0", "--allow-zero-lm-weight", "--plot", str(plot),
                 "--artifact", str(tiny_artifact), *LOCAL]) == 0
    assert png_size(plot) == (800, 600)


def test_eval_plot_draws_zorro_per_paradigm(tmp_path: Path, tiny_artifact: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "zorro.png"
    assert main(["eval", str(tiny_artifact), "--eval-dir", str(zorro_dir(tmp_path)),
                 "--measures", "zorro", "--threads", "1", "--plot", str(plot)]) == 0
    assert "Zorro accuracy per paradigm" in capsys.readouterr().out
    width, height = png_size(plot)
    assert width == 800 and height == int(100 * (1.5 + 0.28 * 4))
    assert pixels_like(plot, (0x4C / 255, 0x72 / 255, 0xB0 / 255)) > 200  # the bars


def test_eval_plot_needs_zorro(tmp_path: Path, tiny_artifact: Path) -> None:
    with pytest.raises(SystemExit, match="add zorro to --measures"):
        main(["eval", str(tiny_artifact), "--measures", "asr", "--plot",
              str(tmp_path / "x.png")])


@pytest.mark.parametrize("command", ["tune", "eval"])
def test_without_matplotlib_plot_says_how_to_install_it(
        tmp_path: Path, tiny_artifact: Path, command: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    plot = tmp_path / "x.png"
    args = (["tune", "-f", "jsonl", str(dev_set(tmp_path)), "--artifact", str(tiny_artifact),
             *LOCAL] if command == "tune" else
            ["eval", str(tiny_artifact), "--eval-dir", str(zorro_dir(tmp_path)),
             "--measures", "zorro"])
    assert main([*args, "--plot", str(plot)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        (f"electric {command} needs the 'bench' extra (matplotlib): "
         "pip install --require-hashes -r requirements/test.txt")]
    assert captured.out == ""  # refused before any scoring
    assert not plot.exists()

"""What a user can get wrong before any work starts: a missing extra, a missing dev-set folder.

Each ends in one line on stderr, never a traceback. A missing package is simulated offline:
``sys.modules[name] = None`` makes ``import name`` fail with ModuleNotFoundError.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from electric.cli import main, missing_extra
from evaluation.sets import ASR_FILE, EVAL_DIR_VARIABLE, resolve_eval_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def forget(monkeypatch: pytest.MonkeyPatch, *prefixes: str) -> None:
    """Drop already imported modules, so that the next import runs again (restored after)."""
    for name in list(sys.modules):
        if name.startswith(prefixes):
            monkeypatch.delitem(sys.modules, name)


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err.strip()


def test_train_without_torch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    forget(monkeypatch, "model_export.train", "model_export.data", "model_export.nce",
           "model_export.model", "model_export.warmstart", "model_export.run_files")
    monkeypatch.setitem(sys.modules, "torch", None)
    assert main(["train", "--preset", "tiny", "--corpora", str(EXAMPLES / "corpus.txt"),
                 "--run-dir", str(tmp_path / "run")]) == 1
    assert one_line(capsys) == ("electric train needs the 'export' extra (torch): "
                                "pip install --require-hashes -r requirements/export.txt")


def test_bench_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["bench", "plot", str(tmp_path), "--out", str(tmp_path / "img")]) == 1
    assert one_line(capsys) == ("electric bench plot needs the 'bench' extra (matplotlib): "
                                "pip install --require-hashes -r requirements/test.txt")


def test_any_command_without_onnxruntime(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    forget(monkeypatch, "service.commands.rerank", "service.commands.score", "service.commands.tune",
           "service.local", "service.engine")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["score", str(EXAMPLES / "sentences.txt")]) == 1
    assert one_line(capsys).startswith("electric needs the 'cpu' extra (onnxruntime): "
                                       "pip install --require-hashes -r requirements/serve.txt")


def test_mt_metric_without_sacrebleu(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    # The metric module imports sacrebleu only when BLEU or chrF is asked for.
    for module in ("sacrebleu", "sacrebleu.metrics", "sacrebleu.metrics.bleu"):
        monkeypatch.setitem(sys.modules, module, None)
    assert main(["tune", str(EXAMPLES / "asr_dev.jsonl"), "-f", "jsonl",
                 "--metric", "bleu"]) == 1
    assert one_line(capsys) == ("electric tune needs the 'mt' extra (sacrebleu): "
                                "pip install --require-hashes -r requirements/test.txt")


def test_only_known_modules_map_to_an_extra() -> None:
    assert missing_extra(ModuleNotFoundError(name="sacrebleu.metrics"), "tune") == (
        "electric tune needs the 'mt' extra (sacrebleu): "
        "pip install --require-hashes -r requirements/test.txt")
    # Our own modules, or anything else, are bugs: main() lets them raise.
    assert missing_extra(ModuleNotFoundError(name="model_export.nowhere"), "eval") is None
    assert missing_extra(ModuleNotFoundError(name=None), "eval") is None


def test_eval_dir_from_the_flag_the_variable_or_the_default(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sample = EXAMPLES / "eval"
    assert resolve_eval_dir(str(sample)) == sample
    monkeypatch.setenv(EVAL_DIR_VARIABLE, str(sample))
    assert resolve_eval_dir(None) == sample
    monkeypatch.setenv(EVAL_DIR_VARIABLE, str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=rf"absent \(\${EVAL_DIR_VARIABLE}\) does not "
                                                rf"exist: pass --eval-dir DIR"):
        resolve_eval_dir(None)
    (tmp_path / ASR_FILE).write_text("")
    assert resolve_eval_dir(tmp_path, ["asr"]) == tmp_path
    with pytest.raises(FileNotFoundError, match="lacks minimal_pairs_zorro.jsonl"):
        resolve_eval_dir(tmp_path, ["asr", "zorro"])


def test_electric_eval_names_the_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as caught:
        main(["eval", str(EXAMPLES), "--eval-dir", str(missing)])
    message = str(caught.value.code)
    assert message.startswith(f"electric eval: the dev sets' folder {missing} (--eval-dir) "
                              "does not exist")
    assert EVAL_DIR_VARIABLE in message and "\n" not in message

"""``electric tune``: MT metrics on summed statistics, the printed grid, where weights go."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.artifact import load_manifest
from service.cli import main
from service.corpus_metrics import metric_named
from service.scoring import Weights
from service.tune_cmd import format_grid
from service.tuning import FixedGrid, TuningList, choose, corpus_value, grid_search, nbest_matrix

LOCAL = ["--variant", "fp32", "--threads", "1"]
REFS = ["the cat sat on the mat", "a dog ran to the old house", "she reads a good book today",
        "the big red car is not new", "he said that the bird sat in the tree"]


def mt_lists(informative: bool) -> list[TuningList]:
    """The reference second in every list; the base score prefers a scrambled first one."""
    out = []
    for ref in REFS:
        words = ref.split()
        texts = [" ".join(reversed(words)), ref, " ".join(words[:3])]
        lm = [-10.0, -2.0 if informative else -12.0, -11.0]
        out.append(TuningList(ref, texts, [0.0, -1.0, -2.0], lm, [len(t.split()) for t in texts]))
    return out


@pytest.mark.parametrize("name, cls", [("bleu", "bleu.BLEU"), ("chrf", "chrf.CHRF")])
def test_mt_metrics_match_sacrebleu_on_the_chosen_hypotheses(name: str, cls: str) -> None:
    module, _, attr = cls.partition(".")
    sacre = getattr(pytest.importorskip(f"sacrebleu.metrics.{module}"), attr)
    lists = mt_lists(informative=True)
    m = nbest_matrix(lists, metric_named(name))
    for chosen in ([0] * 5, [1] * 5, [2, 1, 0, 1, 2]):
        hyps = [lst.texts[c] for lst, c in zip(lists, chosen)]
        expected = sacre().corpus_score(hyps, [REFS]).score
        assert corpus_value(m, np.array(chosen)) == pytest.approx(expected)


def test_grid_search_maximises_bleu() -> None:
    pytest.importorskip("sacrebleu")
    m = nbest_matrix(mt_lists(informative=True), metric_named("bleu"))
    fit = grid_search(m)
    assert fit.metric == "bleu" and fit.value == pytest.approx(100.0)
    assert fit.baseline < 10.0 and fit.oracle == pytest.approx(100.0)
    assert choose(m, fit.weights).tolist() == [1] * 5
    with pytest.raises(ValueError, match="not WER"):
        _ = fit.wer
    flat = grid_search(nbest_matrix(mt_lists(informative=False), metric_named("chrf")))
    assert flat.value == pytest.approx(flat.baseline)  # a useless LM gains nothing


def test_fixed_grid_and_table() -> None:
    m = nbest_matrix(mt_lists(informative=True), metric_named("wer"))
    fit = grid_search(m, FixedGrid((0.0, 0.5, 2.0), (-1.0, 0.0, 1.0)))
    # Five cells reach WER 0; the corner whose neighbours all do too is the plateau's middle.
    assert fit.weights == Weights(2.0, 1.0) and fit.wer == 0.0
    table = format_grid(fit).splitlines()
    assert table[0] == "WER by lm_weight (rows) and length_bonus (columns)"
    assert table[1].split() == ["lm_weight", "-1", "0", "1"]
    assert table[2].split() == ["0", "57.14", "85.71", "85.71"]
    assert table[4].split() == ["2", "0.00", "0.00", "0.00*"]
    assert len(table) == 5


def dev_set(tmp_path: Path) -> Path:
    path = tmp_path / "dev.jsonl"
    rows = [{"id": str(i), "reference": ref,
             "hypotheses": [ref.replace("the", "a"), ref, " ".join(ref.split()[:-1])]}
            for i, ref in enumerate(REFS)]
    rows.append({"id": "no-ref", "hypotheses": ["left out"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_tune_prints_the_grid_and_writes_weights(tmp_path: Path, tiny_artifact: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    artifact = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, artifact)
    out = tmp_path / "weights.json"
    assert main(["tune", "-f", "jsonl", str(dev_set(tmp_path)), "--rank-prior", "log",
                 "--out", str(out), "--write-artifact", "--artifact", str(artifact),
                 *LOCAL]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("WER by lm_weight (rows) and length_bonus/lm_weight (columns)")
    assert printed.count("*") == 1
    assert "5 lists (1 without a reference left out), rank prior log" in printed
    saved = json.loads(out.read_text())
    assert saved["rank_prior"] == "log" and saved["metric"] == "wer"
    assert saved["value"] <= saved["baseline"]  # lm_weight 0 is on the grid
    manifest = load_manifest(artifact)
    assert manifest.rerank.lm_weight == saved["lm_weight"]
    assert manifest.rerank.length_bonus == saved["length_bonus"]
    assert manifest.evaluation["rerank_tuning"]["dev_set"].endswith("dev.jsonl")
    # rerank picks the new defaults up from the manifest.
    assert main(["rerank", "-f", "jsonl", str(dev_set(tmp_path)), str(tmp_path / "o.jsonl"),
                 "--rank-prior", "log", "--artifact", str(artifact), *LOCAL]) == 0
    err = capsys.readouterr().err
    assert f"lm_weight {saved['lm_weight']:.6g}" in err and "tiny-test's manifest" in err


def test_explicit_grid_and_bleu_from_the_command_line(tmp_path: Path, tiny_artifact: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sacrebleu")
    nbest = tmp_path / "nbest"
    nbest.write_text("".join(f"{i} ||| {ref} ||| F0= -1 ||| -1\n"
                             f"{i} ||| {' '.join(reversed(ref.split()))} ||| F0= 0 ||| 0\n"
                             for i, ref in enumerate(REFS)))
    refs = tmp_path / "refs"
    refs.write_text("\n".join(REFS) + "\n")
    assert main(["tune", "-f", "moses", str(nbest), "--ref", str(refs), "--metric", "bleu",
                 "--lm-weights", "0,1", "--length-bonuses", "0", "--artifact",
                 str(tiny_artifact), *LOCAL]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("BLEU by lm_weight (rows) and length_bonus (columns)")
    assert "oracle 100.00" in printed


def test_tune_errors(tmp_path: Path, tiny_artifact: Path,
                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "noref.jsonl"
    path.write_text('{"hypotheses": ["a", "b"]}\n')
    assert main(["tune", "-f", "jsonl", str(path), "--artifact", str(tiny_artifact),
                 *LOCAL]) == 1
    assert "no list has both a reference and a hypothesis" in capsys.readouterr().err
    assert main(["tune", "-f", "jsonl", str(path), "--length-bonuses", "1",
                 "--artifact", str(tiny_artifact), *LOCAL]) == 1
    assert "--length-bonuses needs --lm-weights" in capsys.readouterr().err

"""``electric tune``: MT metrics on summed statistics, the printed grid, where weights go."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from electric.cli import main
from service.artifact import load_manifest, write_manifest
from service.commands.tune import format_grid
from service.rerank.metrics import format_value, metric_named
from service.rerank.tuning import (
    FixedGrid,
    TuningList,
    choose,
    corpus_value,
    electric_matters,
    grid_search,
    held_out,
    nbest_matrix,
)
from service.scoring import Weights

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
    flat = grid_search(nbest_matrix(mt_lists(informative=False), metric_named("chrf")))
    assert flat.value == pytest.approx(flat.baseline)  # a useless LM gains nothing


def test_fixed_grid_and_table() -> None:
    m = nbest_matrix(mt_lists(informative=True), metric_named("wer"))
    fit = grid_search(m, FixedGrid((0.0, 0.5, 2.0), (-1.0, 0.0, 1.0)))
    # Five cells reach WER 0; the corner whose neighbours all do too is the plateau's middle.
    assert fit.weights == Weights(2.0, 1.0) and fit.value == 0.0
    table = format_grid(fit).splitlines()
    assert table[0] == "WER by lm_weight (rows) and length_bonus (columns)"
    assert table[1].split() == ["lm_weight", "-1", "0", "1"]
    assert table[2].split() == ["0", "57.14", "85.71", "85.71"]
    assert table[4].split() == ["2", "0.00", "0.00", "0.00*"]
    assert len(table) == 5


def dev_set(tmp_path: Path, copies: int = 1) -> Path:
    path = tmp_path / "dev.jsonl"
    rows = [{"id": f"{i}-{k}" if copies > 1 else str(i), "reference": ref,
             "hypotheses": [ref.replace("the", "a"), ref, " ".join(ref.split()[:-1])]}
            for k in range(copies) for i, ref in enumerate(REFS)]
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


def with_prior(tiny_artifact: Path, folder: Path, prior: str) -> Path:
    shutil.copytree(tiny_artifact, folder)
    manifest = load_manifest(folder)
    write_manifest(folder, manifest.model_copy(update={"rerank": manifest.rerank.model_copy(
        update={"rank_prior": prior})}))
    return folder


def test_tune_fits_with_the_manifests_prior_by_default(
        tmp_path: Path, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = with_prior(tiny_artifact, tmp_path / "artifact", "log")
    out = tmp_path / "weights.json"
    assert main(["tune", "-f", "jsonl", str(dev_set(tmp_path)), "--out", str(out),
                 "--allow-zero-lm-weight", "--artifact", str(artifact), *LOCAL]) == 0
    assert "rank prior log (tiny-test's manifest)" in capsys.readouterr().out
    assert json.loads(out.read_text())["rank_prior"] == "log"
    assert main(["tune", "-f", "jsonl", str(dev_set(tmp_path)), "--rank-prior", "none",
                 "--artifact", str(artifact), *LOCAL]) == 0
    assert "rank prior none (given)" in capsys.readouterr().out


def test_tune_refuses_to_write_weights_that_switch_electric_off(
        tmp_path: Path, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = with_prior(tiny_artifact, tmp_path / "artifact", "log")
    before = (artifact / "electric.json").read_text()
    out = tmp_path / "weights.json"
    args = ["tune", "-f", "jsonl", str(dev_set(tmp_path)), "--out", str(out), "--write-artifact",
            "--artifact", str(artifact), *LOCAL]
    # lm_weight 0, and one so small that no list's choice moves: both switch Electric off.
    for weights in ("0", "1e-9"):
        assert main([*args, "--lm-weights", weights]) == 1
        err = capsys.readouterr().err
        assert "switches Electric off" in err and "--allow-zero-lm-weight" in err
        assert not out.exists() and (artifact / "electric.json").read_text() == before
    # Only printing: a note, no refusal.
    assert main(["tune", "-f", "jsonl", str(dev_set(tmp_path)), "--lm-weights", "0",
                 "--artifact", str(artifact), *LOCAL]) == 0
    assert "note: lm_weight 0 switches Electric off" in capsys.readouterr().out
    assert main([*args, "--lm-weights", "0", "--allow-zero-lm-weight"]) == 0
    assert json.loads(out.read_text())["lm_weight"] == 0.0
    assert load_manifest(artifact).rerank.lm_weight == 0.0


def test_electric_matters_when_it_changes_a_choice() -> None:
    m = nbest_matrix(mt_lists(informative=True), metric_named("wer"))
    assert electric_matters(m, Weights(1.0, 0.0))
    assert not electric_matters(m, Weights(0.0, 1.0))
    assert not electric_matters(m, Weights(1e-9, 0.0))


def test_held_out_split_is_by_id_and_deterministic() -> None:
    ids = [f"cv-{i:05d}" for i in range(2000)]
    held = held_out(ids, 0.25)
    assert 400 < held.sum() < 600
    assert held_out(ids, 0.25).tolist() == held.tolist()
    # A list's side depends on its id alone, not on the order or the other lists.
    assert held_out(ids[::-1], 0.25).tolist() == held[::-1].tolist()
    assert held_out(ids[:100], 0.25).tolist() == held[:100].tolist()
    # Halves: the held-out half is the one model_export's evaluation reports on.
    from evaluation.sets import in_tuning_half

    assert held_out(ids, 0.5).tolist() == [not in_tuning_half(i) for i in ids]
    with pytest.raises(ValueError, match="between 0 and 1"):
        held_out(ids, 1.0)


def test_tune_holdout_reports_the_held_out_lists(
        tmp_path: Path, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dev = dev_set(tmp_path, copies=8)  # 40 lists with references
    rows = [json.loads(x) for x in dev.read_text().splitlines() if "reference" in x]
    held = held_out([r["id"] for r in rows], 0.25)
    out = tmp_path / "weights.json"
    args = ["tune", "-f", "jsonl", str(dev), "--holdout", "0.25", "--rank-prior", "log",
            "--allow-zero-lm-weight", "--out", str(out), "--artifact", str(tiny_artifact),
            *LOCAL]
    assert main(args) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["lists"] == int((~held).sum()) and saved["holdout"]["lists"] == int(held.sum())
    assert f"fitted on {saved['lists']}: base scores alone" in printed
    assert f"held out {int(held.sum())} (--holdout 0.25, by a hash of the list id)" in printed
    assert main(args) == 0 and json.loads(out.read_text()) == saved  # deterministic
    capsys.readouterr()
    # The held-out figures are what rerank measures on those lists with the written weights.
    part = tmp_path / "held.jsonl"
    part.write_text("".join(json.dumps(r) + "\n" for r, h in zip(rows, held) if h))
    assert main(["rerank", "-f", "jsonl", str(part), str(tmp_path / "o"), "--weights", str(out),
                 "--artifact", str(tiny_artifact), *LOCAL]) == 0
    err = capsys.readouterr().err
    h = saved["holdout"]
    wer = {k: format_value("wer", h[k]) for k in ("baseline", "value", "oracle")}
    assert (f"before {wer['baseline']} (base scores alone), after {wer['value']}, "
            f"oracle {wer['oracle']}") in err
    # No fraction: halves.
    assert main([*args[:5], *args[6:]]) == 0
    assert "(--holdout 0.5, by a hash of the list id)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:
        main([*args[:5], "1.5", *args[6:]])
    assert refused.value.code == 2
    assert "not a fraction between 0 and 1" in capsys.readouterr().err


def test_tune_reports_k_fold_and_cross_domain_and_writes_only_safe_weights(
    tmp_path: Path, tiny_artifact: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = with_prior(tiny_artifact, tmp_path / "artifact", "log")
    dev = dev_set(tmp_path, copies=4)  # 20 lists with references: 5 folds of about 4
    # A second domain where the beam is always right: any weight that changes a choice harms it.
    rows = [json.loads(x) for x in dev.read_text().splitlines() if "reference" in x]
    other = tmp_path / "other.jsonl"
    other.write_text(
        "".join(
            json.dumps({**r, "id": "o-" + r["id"], "reference": r["hypotheses"][0]}) + "\n"
            for r in rows
        )
    )
    out = tmp_path / "weights.json"
    assert (
        main(
            [
                "tune",
                "-f",
                "jsonl",
                str(dev),
                "--cross",
                str(other),
                "--out",
                str(out),
                "--write-artifact",
                "--artifact",
                str(artifact),
                *LOCAL,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "5-fold held out (each fold re-ranked by weights fitted on the others)" in printed
    assert "cross-domain, other.jsonl (20 lists)" in printed
    assert "dev.jsonl's weights on other.jsonl" in printed
    assert "safe choice for both" in printed
    saved = json.loads(out.read_text())
    assert saved["kfold"]["folds"] == 5 and saved["kfold"]["lists"] == 20
    assert saved["cross_domain"]["dev_set"].endswith("other.jsonl")
    assert min(saved["safe"]["point"]["gains"].values()) >= 0.0
    assert load_manifest(artifact).rerank.lm_weight == saved["lm_weight"]
    # Whatever was chosen, re-ranking the second domain with the written defaults keeps its
    # beam-order WER of 0.
    assert (
        main(
            [
                "rerank",
                "-f",
                "jsonl",
                str(other),
                str(tmp_path / "o.jsonl"),
                "--artifact",
                str(artifact),
                *LOCAL,
            ]
        )
        == 0
    )
    assert "before 0.00% (base scores alone), after 0.00%" in capsys.readouterr().err
    # --folds 0 switches the k-fold figure off; --cross and --holdout do not combine.
    assert (
        main(
            [
                "tune",
                "-f",
                "jsonl",
                str(dev),
                "--folds",
                "0",
                "--allow-zero-lm-weight",
                "--artifact",
                str(artifact),
                *LOCAL,
            ]
        )
        == 0
    )
    assert "k-fold held out: off (--folds 0)" in capsys.readouterr().out
    assert (
        main(
            [
                "tune",
                "-f",
                "jsonl",
                str(dev),
                "--cross",
                str(other),
                "--holdout",
                "--artifact",
                str(artifact),
                *LOCAL,
            ]
        )
        == 1
    )
    assert "--cross and --holdout" in capsys.readouterr().err

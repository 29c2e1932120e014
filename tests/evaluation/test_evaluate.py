"""The evaluation harness on tiny synthetic dev sets: measures, sampling, scorers and the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from evaluation.commands import register as register_eval
from evaluation.evaluate import evaluate
from evaluation.report import format_table
from evaluation.scorers import (
    ArtifactScorer,
    CachedScorer,
    NgramPLLScorer,
    NoisePLLScorer,
    TorchEnergyScorer,
)
from evaluation.sets import (
    MinimalPair,
    in_tuning_half,
    is_human_reference,
    read_asr,
    read_mt,
    read_zorro,
    sample_pairs,
)
from model_export.config import MODEL_PRESETS
from model_export.export import export_artifact
from model_export.model import Electric
from model_export.ngram import NgramCloze
from service.artifact import load_manifest
from service.batch_policy import length_batches


def tiny_electric() -> Electric:
    """A seeded tiny Electric over the 214-token test vocabulary, with weights wide enough that
    energies differ visibly between sentences (BERT's init gives near-constant ones)."""
    cfg = dataclasses.replace(MODEL_PRESETS["tiny"], vocab_size=214, max_positions=64)
    torch.manual_seed(0)
    model = Electric(cfg).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(std=0.2)
    return model


@pytest.fixture(scope="module")
def artifact(tiny_tokenizer_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 + int8 artifact of :func:`tiny_electric`; tests that change it work on a copy."""
    model = tiny_electric()
    folder = tmp_path_factory.mktemp("eval-artifact") / "tiny"
    export_artifact(model, model.cfg, tiny_tokenizer_path, folder, name="tiny",
                    variants=("fp32", "int8"))
    return folder


class TableScorer:
    """Scores from a table (0 for other texts); counts the sentences it was asked for."""

    def __init__(self, table: dict[str, float]):
        self.table = table
        self.asked = 0

    def score(self, sentences: list[str]) -> list[tuple[float, int]]:
        self.asked += len(sentences)
        return [(self.table.get(s, 0.0), max(len(s.split()), 1)) for s in sentences]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def eval_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    asr = []
    for i in range(40):
        ref = f"the cat {i} sat on the mat"
        hyps = [f"the cat {i} sat on a mat", f"a cat {i} sat on the mat",
                f"the cat {i} sat in the mat", f"the cat {i} sat on the mat"]
        right = int(rng.integers(0, 4))
        hyps[right], hyps[3] = hyps[3], hyps[right]
        asr.append({"id": f"utt-{i:03d}", "reference": ref, "hypotheses": hyps})
    write_jsonl(tmp_path / "asr_nbest_commonvoice.jsonl", asr)
    zorro = [{"paradigm": p, "pair": j, "sentence_good": f"{p} good {j}",
              "sentence_bad": f"{p} bad {j}"}
             for p in ("alpha", "beta", "gamma") for j in range(10)]
    write_jsonl(tmp_path / "minimal_pairs_zorro.jsonl", zorro)
    mt = [{"seg_id": s, "doc": "talk", "source": "src", "candidates": [
        {"system": "sysA", "text": f"seg {s} best", "mqm": 0.0},
        {"system": "sysB", "text": f"seg {s} also best", "mqm": 0.0},
        {"system": "sysC", "text": f"seg {s} worse", "mqm": -5.0},
        {"system": "sysD", "text": f"seg {s} worst", "mqm": -10.0},
        {"system": "refB", "text": f"seg {s} human", "mqm": -25.0},
    ]} for s in range(5)]
    write_jsonl(tmp_path / "mt_candidates_ted_zhen_mqm.jsonl", mt)
    return tmp_path


def oracle_table(eval_dir: Path) -> dict[str, float]:
    """A scorer that knows the answers: references high, good > bad, MQM order."""
    table = {lst.reference: 5.0 for lst in read_asr(eval_dir / "asr_nbest_commonvoice.jsonl")}
    for p in read_zorro(eval_dir / "minimal_pairs_zorro.jsonl"):
        table[p.good], table[p.bad] = 1.0, -1.0
    for seg in read_mt(eval_dir / "mt_candidates_ted_zhen_mqm.jsonl"):
        for c in seg.candidates:
            table[c.text] = c.mqm * len(c.text.split())  # length-normalised back to mqm
    return table


def test_measures_with_a_scorer_that_knows_the_answers(eval_dir: Path) -> None:
    results = evaluate({"oracle": TableScorer(oracle_table(eval_dir))}, eval_dir)
    r = results["scorers"]["oracle"]
    asr = r["asr"]
    assert asr["lists_tune"] + asr["lists_report"] == 40 and asr["lists_report"] > 5
    assert asr["wer_reranked"] == pytest.approx(asr["wer_oracle"]) == 0.0
    assert asr["wer_beam"] > 0 and asr["relative_wer_reduction"] == pytest.approx(1.0)
    assert asr["lm_weight"] > 0
    # Each list: the right hypothesis against its three one-error rivals; the beam's 1-best is
    # one of the rivals in the lists where the right one is not first.
    beam_wrong = sum(lst.hypotheses[0] != lst.reference
                     for lst in read_asr(eval_dir / "asr_nbest_commonvoice.jsonl"))
    assert asr["pairs"] == 40 * 3 and asr["pairs_against_beam"] == beam_wrong > 0
    assert asr["pairwise_accuracy"] == asr["pairwise_accuracy_against_beam"] == 1.0
    assert r["zorro"]["accuracy"] == 1.0 and r["zorro"]["pairs"] == 30
    assert set(r["zorro"]["per_paradigm"]) == {"alpha", "beta", "gamma"}
    mt = r["mt"]
    # Per segment: 4 system outputs, one MQM tie among them; refB is left out.
    assert mt["comparisons"] == 5 * 5 and mt["systems_excluded"] == ["refB"]
    assert mt["pairwise_accuracy"] == 1.0 and mt["kendall_tau"] == 1.0


def test_a_scorer_that_knows_nothing(eval_dir: Path) -> None:
    results = evaluate({"flat": TableScorer({})}, eval_dir)
    r = results["scorers"]["flat"]
    assert r["asr"]["wer_reranked"] == r["asr"]["wer_beam"]
    assert r["asr"]["pairwise_accuracy"] == 0.0  # ties count as wrong
    assert r["zorro"]["accuracy"] == 0.0
    assert r["mt"]["pairwise_accuracy"] == 0.0


def test_agreement_and_caching(eval_dir: Path) -> None:
    table = oracle_table(eval_dir)
    a, b = TableScorer(table), TableScorer(table)
    flipped = TableScorer({k: -v for k, v in table.items()})
    results = evaluate({"a": a, "b": b, "flipped": flipped}, eval_dir,
                       compare=[("a", "b"), ("a", "flipped")])
    same, other = results["agreement"]
    assert same["asr_same_choice"] == same["zorro_same_decision"] == same["mt_same_order"] == 1.0
    assert other["zorro_same_decision"] == 0.0 and other["mt_same_order"] == 0.0
    # Every distinct sentence went to the scorer once, though ASR lists repeat texts.
    assert a.asked == results["scorers"]["a"]["sentences_scored"]
    with pytest.raises(ValueError, match="compare"):
        evaluate({"a": a}, eval_dir, compare=[("a", "missing")])


def test_measures_can_be_chosen_and_the_table_shows_them(eval_dir: Path) -> None:
    results = evaluate({"oracle": TableScorer(oracle_table(eval_dir))}, eval_dir,
                       measures=["zorro"], limit_pairs=6)
    assert set(results["scorers"]["oracle"]) == {"zorro", "seconds", "sentences_scored"}
    table = format_table(results)
    assert "| oracle |" in table and "6 pairs" in table and "| beta | 2 | 1.000 |" in table
    full = format_table(evaluate({"oracle": TableScorer(oracle_table(eval_dir))}, eval_dir))
    assert "Oracle WER 0.00%" in full and "refB" in full
    with pytest.raises(ValueError, match="unknown measures"):
        evaluate({}, eval_dir, measures=["bleu"])


def test_sampling_is_stratified_and_seeded() -> None:
    pairs = [MinimalPair(p, j, f"{p}{j}", f"{p}{j}x") for p in "abc" for j in range(10)]
    picked = sample_pairs(pairs, 7, seed=1)
    counts = {p: sum(x.paradigm == p for x in picked) for p in "abc"}
    assert counts == {"a": 3, "b": 2, "c": 2}
    assert picked == sample_pairs(pairs, 7, seed=1) != sample_pairs(pairs, 7, seed=2)
    assert sample_pairs(pairs, None) == pairs == sample_pairs(pairs, 100)


def test_split_and_reference_names() -> None:
    halves = [in_tuning_half(f"cv-{i:05d}") for i in range(2000)]
    assert 900 < sum(halves) < 1100
    assert in_tuning_half("cv-00000") == in_tuning_half("cv-00000")
    assert all(is_human_reference(s) for s in ("ref", "refA", "refB", "ref-B", "human"))
    assert not any(is_human_reference(s) for s in ("Facebook-AI", "metricsystem1", "reference-mt"))


def test_length_batches_respect_the_token_budget() -> None:
    lengths = [5, 50, 7, 6, 49, 8, 200]
    batches = list(length_batches(lengths, max_tokens=100, max_rows=3))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 100


def test_cached_scorer_scores_each_sentence_once() -> None:
    inner = TableScorer({"a": 1.0})
    cached = CachedScorer(inner)
    assert cached.score(["a", "b", "a"]) == [(1.0, 1), (0.0, 1), (1.0, 1)]
    assert cached.score(["b", "a"]) == [(0.0, 1), (1.0, 1)]
    assert inner.asked == 2


def test_artifact_scorer_matches_pytorch_and_batching(
        artifact: Path, tiny_tokenizer_path: Path, sentences: list[str]) -> None:
    texts = [*sentences, "", "a much longer sentence " * 5]
    fp32 = ArtifactScorer(artifact, "fp32", threads=1)
    batched = fp32.score(texts)
    alone = [fp32.score([t])[0] for t in texts]
    ref = TorchEnergyScorer(tiny_electric(), tiny_tokenizer_path).score(texts)
    assert batched[-2] == (0.0, 0)  # an empty text: no tokens, score 0
    for (s, n), (s1, n1), (r, nr) in zip(batched, alone, ref):
        assert n == n1 == nr
        assert s == pytest.approx(s1, abs=1e-4) and s == pytest.approx(r, abs=1e-3)
    int8 = ArtifactScorer(artifact, "int8", threads=1).score(texts)
    assert np.corrcoef([s for s, _ in int8], [s for s, _ in batched])[0, 1] > 0.9


def test_noise_pll_is_the_sum_of_log_q_at_every_position(tiny_tokenizer_path: Path,
                                                         sentences: list[str]) -> None:
    model = tiny_electric()
    scorer = NoisePLLScorer(model, tiny_tokenizer_path)
    got = scorer.score(sentences)
    for text, (score, n) in zip(sentences, got):
        (enc,) = scorer.tokenizer.encode([text], truncate=False)
        ids = torch.from_numpy(enc.ids)[None]
        with torch.no_grad():
            logq = model.noise(ids, torch.ones_like(ids), model.word_embeddings)[0]  # (T, V)
        expected = sum(float(logq[t, ids[0, t]]) for t in np.flatnonzero(enc.scored))
        assert n == enc.num_tokens and score == pytest.approx(expected, rel=1e-5)


def test_ngram_pll_uses_both_neighbours(tiny_tokenizer_path: Path, sentences: list[str]) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_tokenizer_path))
    seqs = [e.ids for e in tok.encode_batch(sentences)]
    ngram = NgramCloze.build(seqs, tok.get_vocab_size(), special_ids=[2, 3], pad_id=0)
    scorer = NgramPLLScorer(ngram, tiny_tokenizer_path)
    for ids, (score, n) in zip(seqs, scorer.score(sentences)):
        ids = np.asarray(ids)
        expected = ngram.log_prob(ids[:-2], ids[2:], ids[1:-1]).sum()  # [CLS] w.. [SEP]
        assert n == len(ids) - 2 and score == pytest.approx(expected)


def eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register_eval(parser.add_subparsers(dest="command"))
    return parser


def test_cli_writes_json_and_the_manifest(artifact: Path, eval_dir: Path,
                                          tmp_path: Path) -> None:
    copy = tmp_path / "artifact"  # the module's artifact must stay as it is
    shutil.copytree(artifact, copy)
    parser = eval_parser()
    out = tmp_path / "results.json"
    args = parser.parse_args(["eval", str(copy), "--eval-dir", str(eval_dir),
                              "--limit-pairs", "9", "--threads", "1", "--json", str(out),
                              "--update-manifest"])
    before = load_manifest(copy).rerank
    assert args.func(args) == 0
    results = json.loads(out.read_text())
    assert set(results["scorers"]) == {"electric fp32", "electric int8"}
    assert results["agreement"][0]["a"] == "electric fp32"
    assert results["scorers"]["electric fp32"]["zorro"]["pairs"] == 9
    assert results["measures"] == ["asr", "zorro", "mt"]  # no TED-LIUM file: not measured
    manifest = load_manifest(copy)
    # The figures go in; the re-ranking defaults stay (electric tune --cross sets them).
    assert manifest.rerank == before
    shipped = results["scorers"]["electric fp32"]["asr"]["defaults"]
    assert shipped["lm_weight"] == before.lm_weight and shipped["lists"] == 40
    assert manifest.evaluation["scorer"] == "electric fp32"
    assert "electric int8" in manifest.evaluation["baselines"]
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", str(artifact), "--measures", "bleu"])


def test_the_second_asr_domain_runs_where_its_file_is(
    artifact: Path, eval_dir: Path, tmp_path: Path
) -> None:
    rows = [
        json.loads(x) for x in (eval_dir / "asr_nbest_commonvoice.jsonl").read_text().splitlines()
    ]
    write_jsonl(
        eval_dir / "asr_nbest_tedlium.jsonl", [{**r, "id": "ted-" + r["id"]} for r in rows[:30]]
    )
    out = tmp_path / "results.json"
    parser = eval_parser()
    args = parser.parse_args(
        [
            "eval",
            str(artifact),
            "--eval-dir",
            str(eval_dir),
            "--variants",
            "fp32",
            "--limit-pairs",
            "6",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert args.func(args) == 0
    results = json.loads(out.read_text())
    assert results["measures"] == ["asr", "asr_ted", "zorro", "mt"]
    ted = results["scorers"]["electric fp32"]["asr_ted"]
    assert ted["lists_tune"] + ted["lists_report"] == 30
    assert ted["defaults"]["lists"] == 30
    assert 0.0 <= ted["defaults"]["wer_reranked"] <= 1.0
    table = format_table(results)
    assert "TED-LIUM WER beam -> re-ranked" in table and "With the artifact's defaults" in table


def tiny_bert_folder(folder: Path, tokenizer_path: Path) -> Path:
    """A BERT-style warm-start folder (config.json, model.safetensors, tokenizer.json) holding
    the tiny model's encoder, so the baselines run without real weights."""
    model = tiny_electric()
    cfg = model.cfg
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden,
        "num_hidden_layers": cfg.layers, "num_attention_heads": cfg.heads,
        "intermediate_size": cfg.intermediate, "max_position_embeddings": cfg.max_positions,
        "type_vocab_size": cfg.type_vocab_size, "hidden_act": "gelu", "pad_token_id": 0}))
    save_file({k: v.contiguous() for k, v in model.energy.state_dict().items()
               if k.startswith(("embeddings.", "encoder."))}, str(folder / "model.safetensors"))
    shutil.copy(tokenizer_path, folder / "tokenizer.json")
    return folder


def test_cli_runs_the_baselines(artifact: Path, tiny_tokenizer_path: Path, eval_dir: Path,
                                tmp_path: Path, sentences: list[str]) -> None:
    corpus = tmp_path / "corpus.txt.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        f.write("\n".join(sentences * 3) + "\n")
    warm = tiny_bert_folder(tmp_path / "bert", tiny_tokenizer_path)
    out = tmp_path / "results.json"
    parser = eval_parser()
    args = parser.parse_args(["eval", str(artifact), "--eval-dir", str(eval_dir),
                              "--variants", "fp32", "--baselines", "--warm-start", str(warm),
                              "--corpora", str(corpus), "--limit-pairs", "6", "--threads", "1",
                              "--json", str(out)])
    assert args.func(args) == 0
    results = json.loads(out.read_text())
    assert list(results["scorers"]) == ["electric fp32", "warm start, random head",
                                        "noise PLL (n-gram cloze on corpora)", "Kneser-Ney 4-gram"]
    assert results["agreement"] == []

    # With a training checkpoint, the PLL baseline is the run's own two-tower noise model.
    model = tiny_electric()
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(run / "final.safetensors"),
              {"model_config": json.dumps(model.cfg.to_dict()), "tokenizer_path": "tokenizer.json"})
    shutil.copy(tiny_tokenizer_path, run / "tokenizer.json")
    (run / "config.json").write_text(json.dumps({"model_config": model.cfg.to_dict(),
                                                 "train_config": {"noise": "two_tower"},
                                                 "tokenizer_path": "tokenizer.json"}))
    args = parser.parse_args(["eval", str(artifact), "--eval-dir", str(eval_dir),
                              "--variants", "fp32", "--baselines", "--warm-start", str(warm),
                              "--corpora", str(corpus),
                              "--checkpoint", str(run / "final.safetensors"),
                              "--measures", "zorro", "--limit-pairs", "3", "--json", str(out)])
    assert args.func(args) == 0
    assert "noise PLL (run's two-tower)" in json.loads(out.read_text())["scorers"]

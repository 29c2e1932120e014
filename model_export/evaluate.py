"""``electric eval``: the dev-set measures of an artifact, side by side with the baselines.

Measures (data: shared/eval, SOURCES.md there):

- ASR re-ranking (``asr``): 5-best lists without acoustic scores, so the recogniser's opinion
  enters as a rank prior, ``base_score = -rank`` (linear) or ``-log(1 + rank)``.
  ``combined = base_score + lm_weight * score + length_bonus * num_tokens``; the prior and the
  weights are fitted by grid search (service/tuning.py) on the half of the lists whose id
  hashes into the tuning half, and WER is reported on the other half: beam-order 1-best,
  re-ranked, and the oracle.
- Minimal pairs (``zorro``): accuracy of score(good) > score(bad), overall and per paradigm; a
  tie counts as wrong. ``limit_pairs`` takes a seeded sample stratified by paradigm.
- MT (``mt``): per segment, every pair of candidates with different MQM and different text is
  a comparison; a scorer is right when its length-normalised score (score / num_tokens) orders
  the pair as MQM does (a tie in score counts as wrong). Human references are left out.
- Agreement (``compare``): for two scorers a, b (fp32 and int8 of one artifact): the fraction
  of ASR lists where both pick the same hypothesis under a's tuned weights, of minimal pairs
  with the same decision, and of MT comparisons ordered the same way.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from model_export.eval_sets import (
    ASR_FILE,
    MT_FILE,
    ZORRO_FILE,
    MinimalPair,
    MtSegment,
    NbestList,
    in_tuning_half,
    is_human_reference,
    read_asr,
    read_mt,
    read_zorro,
    sample_pairs,
)
from model_export.scorers import CachedScorer, Scorer
from service.scoring import RANK_PRIORS, Weights
from service.tuning import (
    NbestMatrix,
    TuningList,
    choose,
    corpus_wer,
    grid_search,
    nbest_matrix,
    oracle_wer,
)

MEASURES = ("asr", "zorro", "mt")
# The priors an ASR fit may choose between (service.scoring.RANK_PRIORS): a list scored with
# none of them ignores the beam's order, which the Common Voice lists carry but not its scores.
FITTED_PRIORS = ("linear", "log")


def _asr_matrix(lists: Sequence[NbestList], scores: dict[str, tuple[float, int]],
                prior: str) -> NbestMatrix:
    return nbest_matrix([
        TuningList(reference=lst.reference, texts=lst.hypotheses,
                   base_scores=[RANK_PRIORS[prior](r) for r in range(len(lst.hypotheses))],
                   scores=[scores[h][0] for h in lst.hypotheses],
                   num_tokens=[scores[h][1] for h in lst.hypotheses])
        for lst in lists])


def measure_asr(scorer: Scorer, lists: Sequence[NbestList]) -> tuple[dict[str, Any], np.ndarray]:
    """The ASR figures, and the hypothesis each list (all of them, file order) picks."""
    texts = list(dict.fromkeys(h for lst in lists for h in lst.hypotheses))
    scores = dict(zip(texts, scorer.score(texts)))
    tune = np.array([in_tuning_half(lst.id) for lst in lists])
    fits = {}
    for prior in FITTED_PRIORS:
        m = _asr_matrix(lists, scores, prior)
        fits[prior] = (grid_search(m.subset(tune)), m)
    # The prior with the lower tuning WER; linear on a tie (it is the simpler to explain).
    prior = min(fits, key=lambda p: (fits[p][0].wer, p != "linear"))
    fit, m = fits[prior]
    chosen = choose(m, fit.weights)  # (L,)
    report = m.subset(~tune)
    beam = corpus_wer(report, np.zeros(report.lists, dtype=np.int64))
    reranked = corpus_wer(report, chosen[~tune])
    return {
        "lists_tune": int(tune.sum()), "lists_report": int((~tune).sum()),
        "rank_prior": prior, "lm_weight": fit.weights.lm_weight,
        "length_bonus": fit.weights.length_bonus,
        "wer_tune_beam": fit.baseline_wer, "wer_tune_reranked": fit.wer,
        "wer_beam": beam, "wer_reranked": reranked, "wer_oracle": oracle_wer(report),
        "relative_wer_reduction": (beam - reranked) / beam if beam else 0.0,
    }, chosen


def measure_zorro(scorer: Scorer, pairs: Sequence[MinimalPair]
                  ) -> tuple[dict[str, Any], np.ndarray]:
    """Accuracy overall and per paradigm, and the (P,) bool decisions."""
    good = scorer.score([p.good for p in pairs])
    bad = scorer.score([p.bad for p in pairs])
    right = np.array([g[0] > b[0] for g, b in zip(good, bad)])
    per: dict[str, list[bool]] = defaultdict(list)
    for p, r in zip(pairs, right):
        per[p.paradigm].append(bool(r))
    return {
        "pairs": len(pairs), "accuracy": float(right.mean()) if len(right) else float("nan"),
        "per_paradigm": {k: {"pairs": len(v), "accuracy": float(np.mean(v))}
                         for k, v in sorted(per.items())},
    }, right


def _mt_comparisons(segments: Sequence[MtSegment]) -> list[tuple[str, str, float]]:
    """(text i, text j, sign of mqm_i - mqm_j) for every pair of different system outputs with
    unequal MQM."""
    out = []
    for seg in segments:
        cands = [c for c in seg.candidates if not is_human_reference(c.system)]
        for i in range(len(cands)):
            for j in range(i + 1, len(cands)):
                # Identical texts with different MQM (annotator noise) no scorer can order.
                if cands[i].mqm != cands[j].mqm and cands[i].text != cands[j].text:
                    out.append((cands[i].text, cands[j].text,
                                math.copysign(1.0, cands[i].mqm - cands[j].mqm)))
    return out


def measure_mt(scorer: Scorer, segments: Sequence[MtSegment]) -> tuple[dict[str, Any], np.ndarray]:
    """Pairwise accuracy of score/num_tokens against MQM, and the (C,) metric signs."""
    comparisons = _mt_comparisons(segments)
    texts = list(dict.fromkeys(t for a, b, _ in comparisons for t in (a, b)))
    norm = {t: s / n if n else 0.0 for t, (s, n) in zip(texts, scorer.score(texts))}
    metric = np.sign(np.array([norm[a] - norm[b] for a, b, _ in comparisons]))
    human = np.array([s for _, _, s in comparisons])
    right = metric == human
    concordant, discordant = int(right.sum()), int(((metric != 0) & ~right).sum())
    return {
        "segments": len(segments), "comparisons": len(comparisons),
        "pairwise_accuracy": float(right.mean()) if len(right) else float("nan"),
        "kendall_tau": ((concordant - discordant) / len(comparisons) if comparisons
                        else float("nan")),
        "systems_excluded": sorted({c.system for s in segments for c in s.candidates
                                    if is_human_reference(c.system)}),
    }, metric


def evaluate(scorers: dict[str, Scorer], eval_dir: Path, *, limit_pairs: int | None = None,
             seed: int = 0, measures: Sequence[str] = MEASURES,
             compare: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Every measure for every scorer (see the module docstring); a JSON-able dict.

    ``compare`` names (a, b) scorer pairs whose decisions are compared (agreement).
    """
    unknown = sorted(set(measures) - set(MEASURES))
    if unknown:
        raise ValueError(f"unknown measures {unknown}; choose from {list(MEASURES)}")
    for a, b in compare:
        if a not in scorers or b not in scorers:
            raise ValueError(f"compare ({a!r}, {b!r}): both must be among {sorted(scorers)}")
    start = time.perf_counter()
    asr = read_asr(eval_dir / ASR_FILE) if "asr" in measures else []
    pairs = (sample_pairs(read_zorro(eval_dir / ZORRO_FILE), limit_pairs, seed)
             if "zorro" in measures else [])
    mt = read_mt(eval_dir / MT_FILE) if "mt" in measures else []

    results: dict[str, Any] = {"eval_dir": str(eval_dir), "limit_pairs": limit_pairs,
                               "seed": seed, "measures": list(measures), "scorers": {}}
    cached = {name: CachedScorer(scorer) for name, scorer in scorers.items()}
    decisions: dict[str, dict[str, np.ndarray]] = {}
    for name, scorer in cached.items():
        row: dict[str, Any] = {"seconds": {}}
        decisions[name] = {}
        for measure, data, fn in (("asr", asr, measure_asr), ("zorro", pairs, measure_zorro),
                                  ("mt", mt, measure_mt)):
            if measure not in measures:
                continue
            t0 = time.perf_counter()
            row[measure], decisions[name][measure] = fn(scorer, data)  # type: ignore[operator]
            row["seconds"][measure] = round(time.perf_counter() - t0, 2)
        row["seconds"]["total"] = round(sum(row["seconds"].values()), 2)
        row["sentences_scored"] = len(scorer.cache)
        results["scorers"][name] = row

    results["agreement"] = [_agreement(a, b, results["scorers"][a], decisions, asr, cached[b])
                            for a, b in compare]
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    return results


def _agreement(a: str, b: str, row_a: dict[str, Any], decisions: dict[str, dict[str, np.ndarray]],
               asr: Sequence[NbestList], scorer_b: Scorer) -> dict[str, Any]:
    out: dict[str, Any] = {"a": a, "b": b}
    if "asr" in decisions[a]:
        # b under a's weights: does shipping b change what a user of the tuned defaults gets?
        fit = row_a["asr"]
        texts = list(dict.fromkeys(h for lst in asr for h in lst.hypotheses))
        scores_b = dict(zip(texts, scorer_b.score(texts)))
        chosen_b = choose(_asr_matrix(asr, scores_b, fit["rank_prior"]),
                          Weights(fit["lm_weight"], fit["length_bonus"]))
        out["asr_same_choice"] = float((decisions[a]["asr"] == chosen_b).mean())
        out["asr_lists"] = len(asr)
    for measure, key in (("zorro", "zorro_same_decision"), ("mt", "mt_same_order")):
        if measure in decisions[a] and measure in decisions[b]:
            out[key] = float((decisions[a][measure] == decisions[b][measure]).mean())
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def format_table(results: dict[str, Any]) -> str:
    """The results as markdown: a summary table, then ASR weights, Zorro per paradigm, agreement."""
    scorers: dict[str, Any] = results["scorers"]
    lines = _table(["scorer", "ASR WER beam 1-best", "ASR WER re-ranked", "rel. WER reduction",
                    "Zorro accuracy", "MT pairwise accuracy", "seconds"],
                   [[name, _pct(r.get("asr", {}).get("wer_beam")),
                     _pct(r.get("asr", {}).get("wer_reranked")),
                     (_num(100 * r["asr"]["relative_wer_reduction"], "+.1f") + "%"
                      if "asr" in r else "-"),
                     _num(r.get("zorro", {}).get("accuracy")),
                     _num(r.get("mt", {}).get("pairwise_accuracy")),
                     _num(r["seconds"].get("total"), ".0f")]
                    for name, r in scorers.items()])
    first = next(iter(scorers.values()), {})
    notes = []
    if "asr" in first:
        a = first["asr"]
        notes.append(f"ASR: WER on the {a['lists_report']} lists of the reporting half; prior "
                     f"and weights fitted on the other {a['lists_tune']} (split by a hash of the "
                     f"id). Oracle WER {_pct(a['wer_oracle'])}.")
    if "zorro" in first:
        sample = (f"a sample of {results['limit_pairs']} stratified by paradigm, seed "
                  f"{results['seed']}" if results.get("limit_pairs") else "all pairs")
        notes.append(f"Zorro: {first['zorro']['pairs']} pairs ({sample}); a tie counts as wrong.")
    if "mt" in first:
        m = first["mt"]
        excluded = ", ".join(m["systems_excluded"]) or "none present in the data"
        notes.append(f"MT: {m['comparisons']} pairs of different candidates with different "
                     f"MQM over {m['segments']} segments; score / num_tokens vs MQM; human "
                     f"references excluded ({excluded}).")
    lines += ["", *notes]

    if "asr" in first:
        title = ("ASR weights (combined = rank prior + lm_weight * score"
                 " + length_bonus * num_tokens):")
        lines += ["", title, ""]
        lines += _table(["scorer", "rank prior", "lm_weight", "length_bonus",
                         "tuning half: beam -> re-ranked"],
                        [[name, r["asr"]["rank_prior"], _num(r["asr"]["lm_weight"], ".4g"),
                          _num(r["asr"]["length_bonus"], ".4g"),
                          " -> ".join((_pct(r["asr"]["wer_tune_beam"]),
                                       _pct(r["asr"]["wer_tune_reranked"])))]
                         for name, r in scorers.items()])
    if "zorro" in first:
        names = list(scorers)
        lines += ["", "Zorro accuracy per paradigm:", ""]
        lines += _table(["paradigm", "pairs", *names],
                        [[p, str(v["pairs"]),
                          *(_num(scorers[n]["zorro"]["per_paradigm"][p]["accuracy"])
                            for n in names)]
                         for p, v in first["zorro"]["per_paradigm"].items()])
    if results.get("agreement"):
        lines += ["", "Agreement (b with a's tuned ASR weights):", ""]
        lines += _table(["a", "b", "ASR same choice", "Zorro same decision", "MT same order"],
                        [[g["a"], g["b"], _pct(g.get("asr_same_choice")),
                          _pct(g.get("zorro_same_decision")), _pct(g.get("mt_same_order"))]
                         for g in results["agreement"]])
    lines += ["", f"Wall time: {results['wall_seconds']:.0f} s"
              + "".join(f"; {k} {v:.0f} s" for k, v in results.get("setup_seconds", {}).items())]
    return "\n".join(lines)


def manifest_summary(results: dict[str, Any], name: str) -> dict[str, Any]:
    """The compact figures of scorer ``name`` (and all others) that go into electric.json."""
    def brief(r: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "asr" in r:
            out["asr"] = {k: r["asr"][k] for k in ("wer_beam", "wer_reranked", "wer_oracle",
                                                  "relative_wer_reduction", "rank_prior",
                                                  "lm_weight", "length_bonus", "lists_report")}
        if "zorro" in r:
            out["zorro_accuracy"] = r["zorro"]["accuracy"]
            out["zorro_pairs"] = r["zorro"]["pairs"]
        if "mt" in r:
            out["mt_pairwise_accuracy"] = r["mt"]["pairwise_accuracy"]
        return out

    files = {"asr": ASR_FILE, "zorro": ZORRO_FILE, "mt": MT_FILE}
    return {"dev_sets": [files[m] for m in results["measures"]], "scorer": name,
            **brief(results["scorers"][name]),
            "baselines": {k: brief(v) for k, v in results["scorers"].items() if k != name},
            "agreement": results.get("agreement", [])}


def _build_scorers(args: argparse.Namespace, folder: Path, setup: dict[str, float]
                   ) -> tuple[dict[str, Scorer], list[tuple[str, str]]]:
    from model_export.scorers import ArtifactScorer
    from service.artifact import load_manifest

    manifest = load_manifest(folder)
    variants = args.variants or [v for v in ("fp32", "int8") if v in manifest.variants]
    scorers: dict[str, Scorer] = {f"electric {v}": ArtifactScorer(folder, v, args.threads)
                                  for v in variants}
    compare = ([("electric fp32", "electric int8")]
               if {"fp32", "int8"} <= set(variants) else [])
    if not args.baselines:
        return scorers, compare

    import torch

    from model_export.kneser_ney import KneserNey
    from model_export.scorers import (
        NgramPLLScorer,
        TorchEnergyScorer,
        ngram_cloze_from_corpora,
        warm_start_model,
    )
    from model_export.train import resolve_warm_start

    if args.threads:
        torch.set_num_threads(args.threads)
    corpora = ([Path(p) for p in args.corpora] if args.corpora
               else sorted((Path(args.eval_dir).parent / "corpora").glob("*.txt.gz")))
    if not corpora:
        raise SystemExit("--baselines needs corpora: none given and none found beside --eval-dir")
    tokenizer_path = folder / manifest.tokenizer.file

    warm = resolve_warm_start(args.warm_start)
    assert warm is not None
    scorers["warm start, random head"] = TorchEnergyScorer(
        warm_start_model(warm, args.seed), warm / "tokenizer.json")

    t0 = time.perf_counter()
    if args.checkpoint:
        scorers.update(_checkpoint_noise(Path(args.checkpoint)))
    else:
        scorers["noise PLL (n-gram cloze on corpora)"] = NgramPLLScorer(
            ngram_cloze_from_corpora(tokenizer_path, corpora), tokenizer_path,
            manifest.architecture.max_positions)
        setup["n-gram cloze build"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    scorers["Kneser-Ney 4-gram"] = KneserNey.from_corpora(corpora, order=4)
    setup["Kneser-Ney training"] = time.perf_counter() - t0
    return scorers, compare


def _checkpoint_noise(checkpoint: Path) -> dict[str, Scorer]:
    """The noise model a training run used, as a one-pass PLL scorer."""
    from model_export.ngram import NgramCloze
    from model_export.scorers import NgramPLLScorer, NoisePLLScorer, has_noise_weights
    from model_export.verify import load_checkpoint_model

    model, cfg, facts = load_checkpoint_model(checkpoint)
    side = checkpoint.parent / "config.json"
    noise = (json.loads(side.read_text()).get("train_config", {}).get("noise", "two_tower")
             if side.is_file() else "two_tower")
    tokenizer = Path(facts["tokenizer_path"] or checkpoint.parent / "tokenizer.json")
    if noise == "ngram":
        table = checkpoint.parent / "ngram.npz"
        if not table.is_file():
            raise SystemExit(f"{checkpoint}: the run used n-gram noise but {table} is missing")
        return {"noise PLL (run's n-gram cloze)": NgramPLLScorer(NgramCloze.load(table), tokenizer,
                                                                 cfg.max_positions)}
    if not has_noise_weights(checkpoint):
        raise SystemExit(f"{checkpoint} holds no noise.* tensors: no two-tower q to score with")
    return {"noise PLL (run's two-tower)": NoisePLLScorer(model, tokenizer)}


def _eval(args: argparse.Namespace) -> int:
    from service.artifact import load_manifest, write_manifest

    folder = Path(args.artifact)
    setup: dict[str, float] = {}
    scorers, compare = _build_scorers(args, folder, setup)
    results = evaluate(scorers, Path(args.eval_dir), limit_pairs=args.limit_pairs, seed=args.seed,
                       measures=args.measures, compare=compare)
    results["artifact"] = str(folder)
    results["setup_seconds"] = {k: round(v, 1) for k, v in setup.items()}
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.update_manifest:
        main = next(iter(results["scorers"]))
        manifest = load_manifest(folder)
        update: dict[str, Any] = {"evaluation": manifest_summary(results, main)}
        asr = results["scorers"][main].get("asr")
        if asr:
            update["rerank"] = manifest.rerank.model_copy(
                update={"lm_weight": asr["lm_weight"], "length_bonus": asr["length_bonus"],
                        "rank_prior": asr["rank_prior"]})
        write_manifest(folder, manifest.model_copy(update=update))
        print(f"\nwrote the figures of {main!r} and its tuned weights into {folder}/electric.json")
    return 0


def _variant_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in ("fp32", "fp16", "int8")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown variants {bad}; choose from fp32, fp16, int8")
    return names


def _measure_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in MEASURES]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown measures {bad}; choose from {', '.join(MEASURES)}")
    return names


def register_eval(sub: Any) -> None:
    """Add ``electric eval`` to the ``electric`` parser."""
    p = sub.add_parser("eval", help="measure an artifact on the dev sets (ASR, Zorro, MT), "
                                    "optionally beside the baselines")
    p.add_argument("artifact", help="artifact folder")
    p.add_argument("--eval-dir", default="../shared/eval", help="folder of the three dev sets")
    p.add_argument("--variants", type=_variant_list,
                   help="comma-separated variants to measure (default: fp32,int8 where present)")
    p.add_argument("--baselines", action="store_true",
                   help="also: warm start with a random head, the noise model's one-pass PLL, "
                        "a Kneser-Ney 4-gram LM")
    p.add_argument("--corpora", nargs="+",
                   help="training text for the KN LM and n-gram cloze (default: *.txt.gz in "
                        "the corpora folder beside --eval-dir)")
    p.add_argument("--checkpoint", help="the run's final.safetensors: its noise model is the "
                                        "PLL baseline (default: an n-gram cloze on --corpora)")
    p.add_argument("--warm-start", default="minilm", help="folder of the warm start baseline")
    p.add_argument("--limit-pairs", type=int, help="a seeded sample of this many Zorro pairs")
    p.add_argument("--measures", type=_measure_list, default=list(MEASURES),
                   help="comma-separated subset of asr,zorro,mt")
    p.add_argument("--seed", type=int, default=0, help="Zorro sample and random head seed")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument("--update-manifest", action="store_true",
                   help="write the first variant's figures and tuned weights into electric.json")
    p.set_defaults(func=_eval)

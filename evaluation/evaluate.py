"""``electric eval``: the dev-set measures of an artifact, side by side with the baselines.

Measures (data: shared/eval, SOURCES.md there):

- ASR re-ranking (``asr``): 5-best lists without acoustic scores, so the recogniser's opinion
  enters as a rank prior, ``base_score = -rank`` (linear) or ``-log(1 + rank)``.
  ``combined = base_score + lm_weight * score + length_bonus * num_tokens``; the prior and the
  weights are fitted by grid search (service/rerank/tuning.py) on the half of the lists whose id
  hashes into the tuning half, and WER is reported on the other half: beam-order 1-best,
  re-ranked, and the oracle. WER on 1,000 lists moves by a few tenths of a point between
  similar models, so the scorer alone is measured too, without any fitting, on all lists:
  pairwise accuracy over pairs of distinct hypotheses of one list with the same number of
  words and different word errors (right: the higher score goes to the fewer errors), and the
  same over the pairs whose worse member is the beam's 1-best (the choices re-ranking exists
  to overturn).
- A second ASR domain (``asr_ted``, TED-LIUM lectures, where its file is present): the same
  figures, fitted and reported on its own halves. Weights fitted on one domain can harm
  another; with an artifact's shipped defaults both ASR measures also give the WER on all
  lists with those defaults (``defaults``), which is what a /v1/rerank user who sends no
  weights gets (``electric tune --cross`` chooses defaults that keep both at or below beam
  order).
- Minimal pairs (``zorro``): accuracy of score(good) > score(bad), overall and per paradigm; a
  tie counts as wrong. ``limit_pairs`` takes a seeded sample stratified by paradigm.
- MT (``mt``): per segment, every pair of candidates with different MQM and different text is
  a comparison; a scorer is right when its length-normalised score (score / num_tokens) orders
  the pair as MQM does (a tie in score counts as wrong). Human references are left out.
- Agreement (``compare``): for two scorers a, b (fp32 and int8 of one artifact): the fraction
  of ASR lists where both pick the same hypothesis under a's tuned weights, of minimal pairs
  with the same decision, and of MT comparisons ordered the same way.

The tables are in eval_report.py, the command line in eval_cli.py.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.scorers import CachedScorer, Scorer
from evaluation.sets import (
    ASR_FILE,
    ASR_TED_FILE,
    FILES,
    MT_FILE,
    OPTIONAL_FILES,
    ZORRO_FILE,
    AsrList,
    MinimalPair,
    MtSegment,
    in_tuning_half,
    is_human_reference,
    read_asr,
    read_mt,
    read_zorro,
    sample_pairs,
)
from service.artifact import RankPrior
from service.cpu import describe_cpu
from service.rerank.tuning import (
    NbestMatrix,
    TuningList,
    choose,
    corpus_value,
    grid_search,
    nbest_matrix,
    oracle_value,
)
from service.scoring import Weights, base_scores

MEASURES = ("asr", "asr_ted", "zorro", "mt")
OPTIONAL_MEASURES = tuple(m for m in MEASURES if FILES[m] in OPTIONAL_FILES)
"""Measures whose file a dev-set folder may lack: by default they run where it is present."""
CORE_MEASURES = tuple(m for m in MEASURES if m not in OPTIONAL_MEASURES)
# The priors an ASR fit may choose between (service.scoring.RANK_PRIORS): a list scored with
# none of them ignores the beam's order, which the Common Voice lists carry but not its scores.
# Having no scores, every list gets its prior from service.scoring.base_scores, as it would
# from /v1/rerank and `electric rerank`.
FITTED_PRIORS: tuple[RankPrior, ...] = ("linear", "log")


def _asr_matrix(lists: Sequence[AsrList], scores: dict[str, tuple[float, int]],
                prior: RankPrior) -> NbestMatrix:
    return nbest_matrix([
        TuningList(reference=lst.reference, texts=lst.hypotheses,
                   base_scores=base_scores([None] * len(lst.hypotheses), prior),
                   scores=[scores[h][0] for h in lst.hypotheses],
                   num_tokens=[scores[h][1] for h in lst.hypotheses])
        for lst in lists])


def _with_prior(m: NbestMatrix, prior: RankPrior) -> NbestMatrix:
    """``m`` with another rank prior: the word errors are not computed again."""
    ranks = np.array(base_scores([None] * m.base.shape[1], prior))
    return dataclasses.replace(m, base=np.where(m.valid, ranks[None, :], 0.0))


def _asr_pairs(lists: Sequence[AsrList], m: NbestMatrix) -> list[tuple[str, str, bool]]:
    """(fewer errors, more errors, the latter is the 1-best) over equal-length hypotheses;
    the errors are the WER statistics ``m`` already holds."""
    out = []
    for i, lst in enumerate(lists):
        errors = dict(zip(lst.hypotheses, m.stats[i, :len(lst.hypotheses), 0]))
        texts = list(errors)
        for a in texts:
            for b in texts:
                if errors[a] < errors[b] and len(a.split()) == len(b.split()):
                    out.append((a, b, b == lst.hypotheses[0]))
    return out


def measure_asr(
    scorer: Scorer, lists: Sequence[AsrList], defaults: Weights | None = None
) -> tuple[dict[str, Any], np.ndarray]:
    """The ASR figures, and the hypothesis each list (all of them, file order) picks. With
    ``defaults`` (an artifact's rerank section) also the WER on all lists with those weights,
    as a user of /v1/rerank who sends no weights gets it."""
    texts = list(dict.fromkeys(h for lst in lists for h in lst.hypotheses))
    scores = dict(zip(texts, scorer.score(texts)))
    tune = np.array([in_tuning_half(lst.id) for lst in lists])
    first = _asr_matrix(lists, scores, FITTED_PRIORS[0])
    fits = {}
    for prior in FITTED_PRIORS:
        m = _with_prior(first, prior)
        fits[prior] = (grid_search(m.subset(tune)), m)
    # The prior with the lower tuning WER; linear on a tie (it is the simpler to explain).
    prior = min(fits, key=lambda p: (fits[p][0].value, p != "linear"))
    fit, m = fits[prior]
    chosen = choose(m, fit.weights)  # (L,)
    report = m.subset(~tune)
    beam = corpus_value(report, np.zeros(report.lists, dtype=np.int64))
    reranked = corpus_value(report, chosen[~tune])
    pairs = _asr_pairs(lists, first)
    right = np.array([scores[a][0] > scores[b][0] for a, b, _ in pairs], dtype=bool)
    against_beam = np.array([beam_is_worse for _, _, beam_is_worse in pairs], dtype=bool)
    with_defaults: dict[str, Any] = {}
    if defaults is not None:
        m_defaults = _with_prior(first, defaults.rank_prior)
        with_defaults = {
            "defaults": {
                "lm_weight": defaults.lm_weight,
                "length_bonus": defaults.length_bonus,
                "rank_prior": defaults.rank_prior,
                "lists": m_defaults.lists,
                "wer_beam": corpus_value(m_defaults, np.zeros(m_defaults.lists, dtype=np.int64)),
                "wer_reranked": corpus_value(m_defaults, choose(m_defaults, defaults)),
            }
        }
    return {
        "lists_tune": int(tune.sum()), "lists_report": int((~tune).sum()),
        "rank_prior": prior, "lm_weight": fit.weights.lm_weight,
        "length_bonus": fit.weights.length_bonus,
        "wer_tune_beam": fit.baseline, "wer_tune_reranked": fit.value,
        "wer_beam": beam, "wer_reranked": reranked, "wer_oracle": oracle_value(report),
        "relative_wer_reduction": (beam - reranked) / beam if beam else 0.0,
        "pairs": len(pairs), "pairwise_accuracy": _mean(right),
        "pairs_against_beam": int(against_beam.sum()),
        "pairwise_accuracy_against_beam": _mean(right[against_beam]),
        **with_defaults,
    }, chosen


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else float("nan")


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


def evaluate(
    scorers: dict[str, Scorer],
    eval_dir: Path,
    *,
    limit_pairs: int | None = None,
    seed: int = 0,
    measures: Sequence[str] = CORE_MEASURES,
    compare: Sequence[tuple[str, str]] = (),
    defaults: dict[str, Weights] | None = None,
) -> dict[str, Any]:
    """Every measure for every scorer (see the module docstring); a JSON-able dict.

    ``compare`` names (a, b) scorer pairs whose decisions are compared (agreement);
    ``defaults`` the re-ranking defaults of scorers that ship them (an artifact's manifest),
    measured as they are on every ASR list.
    """
    defaults = defaults or {}
    unknown = sorted(set(measures) - set(MEASURES))
    if unknown:
        raise ValueError(f"unknown measures {unknown}; choose from {list(MEASURES)}")
    for a, b in compare:
        if a not in scorers or b not in scorers:
            raise ValueError(f"compare ({a!r}, {b!r}): both must be among {sorted(scorers)}")
    start = time.perf_counter()
    asr = read_asr(eval_dir / ASR_FILE) if "asr" in measures else []
    asr_ted = read_asr(eval_dir / ASR_TED_FILE) if "asr_ted" in measures else []
    pairs = (sample_pairs(read_zorro(eval_dir / ZORRO_FILE), limit_pairs, seed)
             if "zorro" in measures else [])
    mt = read_mt(eval_dir / MT_FILE) if "mt" in measures else []

    # int8 answers are the same on every CPU (calibration.WEIGHT_MAX); the machine is recorded
    # anyway, so that a figure can always be traced to what it ran on.
    results: dict[str, Any] = {"eval_dir": str(eval_dir), "limit_pairs": limit_pairs,
                               "seed": seed, "measures": list(measures),
                               "measured_on": describe_cpu(), "scorers": {}}
    cached = {name: CachedScorer(scorer) for name, scorer in scorers.items()}
    decisions: dict[str, dict[str, np.ndarray]] = {}
    for name, scorer in cached.items():
        row: dict[str, Any] = {"seconds": {}}
        decisions[name] = {}
        runs: dict[str, Callable[[Scorer], tuple[dict[str, Any], np.ndarray]]] = {
            "asr": partial(measure_asr, lists=asr, defaults=defaults.get(name)),
            "asr_ted": partial(measure_asr, lists=asr_ted, defaults=defaults.get(name)),
            "zorro": lambda s: measure_zorro(s, pairs),
            "mt": lambda s: measure_mt(s, mt),
        }
        for measure, run in runs.items():
            if measure not in measures:
                continue
            t0 = time.perf_counter()
            row[measure], decisions[name][measure] = run(scorer)
            row["seconds"][measure] = round(time.perf_counter() - t0, 2)
        row["seconds"]["total"] = round(sum(row["seconds"].values()), 2)
        row["sentences_scored"] = len(scorer.cache)
        results["scorers"][name] = row

    results["agreement"] = [_agreement(a, b, results["scorers"][a], decisions, asr, cached[b])
                            for a, b in compare]
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    return results


def _agreement(a: str, b: str, row_a: dict[str, Any], decisions: dict[str, dict[str, np.ndarray]],
               asr: Sequence[AsrList], scorer_b: Scorer) -> dict[str, Any]:
    out: dict[str, Any] = {"a": a, "b": b}
    if "asr" in decisions[a]:
        # b under a's weights: does shipping b change what a user of the tuned defaults gets?
        fitted = Weights.of_section(row_a["asr"])  # the fit's figures hold its weights
        texts = list(dict.fromkeys(h for lst in asr for h in lst.hypotheses))
        scores_b = dict(zip(texts, scorer_b.score(texts)))
        chosen_b = choose(_asr_matrix(asr, scores_b, fitted.rank_prior), fitted)
        out["asr_same_choice"] = float((decisions[a]["asr"] == chosen_b).mean())
        out["asr_lists"] = len(asr)
    for measure, key in (("zorro", "zorro_same_decision"), ("mt", "mt_same_order")):
        if measure in decisions[a] and measure in decisions[b]:
            out[key] = float((decisions[a][measure] == decisions[b][measure]).mean())
    return out

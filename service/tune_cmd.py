"""``electric tune``: fit ``lm_weight`` and ``length_bonus`` on a dev n-best file with references.

Scores the file like ``electric rerank``, grid-searches the weights for the best corpus metric
(service/tuning.py: WER with jiwer for ASR, BLEU or chrF with sacrebleu for MT), prints the
grid, and saves the choice where the other commands read it:

- ``--write-artifact [DIR]``: the ``rerank`` section of the artifact's electric.json (default:
  the artifact that scored), which ``electric serve`` and in-process ``electric rerank`` use as
  their defaults; the fit's figures go under ``evaluation.rerank_tuning``.
- ``--out PATH``: a JSON file for ``electric rerank --weights PATH``.

Both record the rank prior the weights were fitted with, so a later rerank applies the same.

Fitting and reporting on the same lists flatters the result: tune on one half of a dev set
and measure the other with ``electric rerank``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.artifact import RerankDefaults, load_manifest, write_manifest
from service.corpus_metrics import format_value, metric_named
from service.nbest import NbestDocument
from service.rerank_cmd import (
    add_nbest_arguments,
    load_document,
    reports_errors,
    resolve_prior,
    score_document,
    tuning_lists,
)
from service.scorers import add_scorer_arguments, open_scorer
from service.settings import default_artifact
from service.tuning import AnyGrid, FixedGrid, TuningResult, grid_search, nbest_matrix

TABLE_COLUMNS = 9
"""Columns the printed grid shows (evenly spread, the chosen one always among them)."""


def format_grid(fit: TuningResult, max_columns: int = TABLE_COLUMNS) -> str:
    """The grid as a text table: a row per lm_weight, the chosen cell starred."""
    grid, values = fit.grid, fit.values
    a_best, b_best = fit.best
    n = len(grid.columns)
    picked = set(np.linspace(0, n - 1, min(n, max_columns)).round().astype(int).tolist())
    picked.add(b_best)
    cols = sorted(picked)
    head = [f"{'lm_weight':>10}"] + [f"{grid.columns[c]:>9.3g}" for c in cols]
    lines = [f"{fit.metric.upper()} by lm_weight (rows) and {grid.column_name} (columns)"
             + (f", {len(cols)} of {n} columns" if len(cols) < n else ""),
             " ".join(head)]
    for a, lm in enumerate(grid.lm_weights):
        cells = []
        for c in cols:
            text = format_value(fit.metric, float(values[a, c])).rstrip("%")
            cells.append(f"{text + ('*' if (a, c) == (a_best, b_best) else ''):>9}")
        lines.append(" ".join([f"{lm:>10.4g}"] + cells))
    return "\n".join(lines)


def _grid(args: argparse.Namespace) -> AnyGrid | None:
    if args.length_bonuses and not args.lm_weights:
        raise ValueError("--length-bonuses needs --lm-weights")
    if not args.lm_weights:
        return None
    return FixedGrid(tuple(args.lm_weights), tuple(args.length_bonuses or (0.0,)))


def _numbers(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") \
            from None


def summary(fit: TuningResult, doc: NbestDocument, prior: str, model: str) -> dict[str, Any]:
    return {"lm_weight": fit.weights.lm_weight, "length_bonus": fit.weights.length_bonus,
            "rank_prior": prior, "metric": fit.metric, "value": fit.value,
            "baseline": fit.baseline, "oracle": fit.oracle, "lists": fit.lists,
            "dev_set": doc.name, "model": model}


def save_to_artifact(folder: Path, fit: TuningResult, facts: dict[str, Any]) -> Path:
    """Set the manifest's rerank defaults (what serve and rerank use) and record the fit."""
    manifest = load_manifest(folder)
    evaluation = {**manifest.evaluation, "rerank_tuning": facts}
    updated = manifest.model_copy(update={
        "rerank": RerankDefaults(lm_weight=fit.weights.lm_weight,
                                 length_bonus=fit.weights.length_bonus,
                                 rank_prior=facts["rank_prior"]),
        "evaluation": evaluation})
    return write_manifest(folder, updated)


@reports_errors("tune")
def run(args: argparse.Namespace) -> int:
    if args.write_artifact == "" and args.url:
        raise ValueError("with --url, --write-artifact needs the artifact folder to write")
    prior = resolve_prior(args, {})
    metric = metric_named(args.metric)
    grid = _grid(args)
    doc = load_document(args)
    scorer = open_scorer(args)
    try:
        scores = score_document(doc, scorer, args.truncate, args.progress)
    finally:
        scorer.close()
    lists, _ = tuning_lists(doc, scores, prior)
    if not lists:
        raise ValueError(f"{doc.name}: no list has both a reference and a hypothesis; "
                         "give references with --ref")
    fit = grid_search(nbest_matrix(lists, metric), grid)
    print(format_grid(fit))
    print(f"\n{len(lists):,} lists ({len(doc.lists) - len(lists):,} without a reference "
          f"left out), rank prior {prior}")
    print(f"base scores alone {format_value(fit.metric, fit.baseline)}, "
          f"tuned {format_value(fit.metric, fit.value)}, "
          f"oracle {format_value(fit.metric, fit.oracle)}")
    print(f"chosen: lm_weight {fit.weights.lm_weight:.6g}, "
          f"length_bonus {fit.weights.length_bonus:.6g}")
    facts = summary(fit, doc, prior, scorer.name)
    if args.out:
        args.out.write_text(json.dumps(facts, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.write_artifact is not None:
        folder = Path(args.write_artifact) if args.write_artifact else (
            args.artifact or default_artifact())
        print(f"wrote {save_to_artifact(folder, fit, facts)} (rerank section)")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("tune", help="fit lm_weight and length_bonus on a dev n-best file",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="dev n-best file with references (- for stdin)")
    add_nbest_arguments(p)
    p.add_argument("--lm-weights", type=_numbers, metavar="W1,W2,...",
                   help="search these lm_weight values (default: a grid scaled to the scores)")
    p.add_argument("--length-bonuses", type=_numbers, metavar="B1,B2,...",
                   help="with --lm-weights: these length_bonus values (default 0)")
    p.add_argument("--out", type=Path, help="write the chosen weights and figures as JSON")
    p.add_argument("--write-artifact", nargs="?", const="", default=None, metavar="DIR",
                   help="write the weights into DIR/electric.json's rerank section (no DIR: "
                        "the artifact that scored)")
    add_scorer_arguments(p)
    p.set_defaults(func=run)

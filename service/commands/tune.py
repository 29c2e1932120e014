"""``electric tune``: fit ``lm_weight`` and ``length_bonus`` on a dev n-best file with references.

Scores the file like ``electric rerank``, grid-searches the weights for the best corpus metric
(service/rerank/tuning.py: WER with jiwer for ASR, BLEU or chrF with sacrebleu for MT), prints the
grid, and saves the choice where the other commands read it:

- ``--write-artifact [DIR]``: the ``rerank`` section of the artifact's electric.json (default:
  the artifact that scored), which ``electric serve`` and in-process ``electric rerank`` use as
  their defaults; the fit's figures go under ``evaluation.rerank_tuning``.
- ``--out PATH``: a JSON file for ``electric rerank --weights PATH``.
- ``--plot PATH``: the grid as a heat map (PNG), the chosen point marked; needs matplotlib.

Both record the rank prior the weights were fitted with, so a later rerank applies the same.
The prior to fit with is ``--rank-prior``, else the manifest's (as ``electric rerank`` and
/v1/rerank resolve it: service/scoring.py ``resolve_weights``).

Weights that switch Electric off (lm_weight 0, or one so small that no list's choice changes)
are not written unless ``--allow-zero-lm-weight`` says so: written into a manifest they would
make every later re-ranking ignore the model without a word.

Fitting and reporting on the same lists flatters the result: ``--holdout FRACTION`` fits on
the other lists and reports the metric before and after on the held-out ones (a list is held
out by the hash of its id: service/rerank/tuning.py ``held_out``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.artifact import RankPrior, load_manifest, write_manifest
from service.commands.rerank import (
    add_nbest_arguments,
    load_document,
    reports_errors,
    score_document,
    tuning_lists,
)
from service.local import add_scorer_arguments, open_scorer
from service.rerank.metrics import format_value, metric_named
from service.rerank.nbest import NbestDocument
from service.rerank.tuning import (
    AnyGrid,
    FixedGrid,
    NbestMatrix,
    TuningResult,
    choose,
    corpus_value,
    electric_matters,
    grid_search,
    held_out,
    nbest_matrix,
    oracle_value,
)
from service.scoring import Weights, resolve_weights
from service.settings import default_artifact

DEFAULT_HOLDOUT = 0.5
"""``--holdout`` without a fraction: halves, the split model_export's evaluation reports on."""

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


PLOT_TICKS = 8
"""Tick labels per axis of the --plot heat map (the grid has up to 42 x 41 points)."""


def require_matplotlib() -> None:
    """Fail before the scoring, not after it, where matplotlib is missing: main() turns the
    ModuleNotFoundError into the one-line install hint (electric/cli.py EXTRAS)."""
    import matplotlib  # noqa: F401


def plot_grid(fit: TuningResult, path: Path) -> None:
    """The grid as a heat map PNG: the metric at every (lm_weight, column) point, the best
    colour the best value whichever way the metric points, the chosen point marked.

    Only matplotlib's Agg canvas, imported here: no display, no pyplot state, and a serving
    install without matplotlib runs every other command.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid, values = fit.grid, np.asarray(fit.values, dtype=np.float64)
    a_best, b_best = fit.best
    percent = fit.metric == "wer"
    shown = values * 100 if percent else values
    fig = Figure(figsize=(8.0, 6.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # Rows and columns by index: lm_weight is 0 then log-spaced, so real axes would squash it.
    image = ax.imshow(shown, origin="lower", aspect="auto", interpolation="nearest",
                      cmap="viridis" if metric_named(fit.metric).higher_is_better
                      else "viridis_r")
    unit = " (%)" if percent else ""
    fig.colorbar(image, ax=ax, label=f"{fit.metric.upper()}{unit}")
    for axis, labels, set_ticks, set_labels in (
            ("rows", grid.lm_weights, ax.set_yticks, ax.set_yticklabels),
            ("columns", grid.columns, ax.set_xticks, ax.set_xticklabels)):
        ticks = sorted(set(np.linspace(0, len(labels) - 1, min(len(labels), PLOT_TICKS))
                           .round().astype(int).tolist()))
        set_ticks(ticks)
        set_labels([f"{labels[t]:.3g}" for t in ticks])
    ax.set_ylabel("lm_weight")
    ax.set_xlabel(grid.column_name)
    ax.scatter([b_best], [a_best], marker="x", s=120, linewidths=2.5, color="red",
               label=(f"chosen: lm_weight {fit.weights.lm_weight:.4g}, length_bonus "
                      f"{fit.weights.length_bonus:.4g}: {format_value(fit.metric, fit.value)}"))
    ax.legend(loc="upper right", fontsize="small")
    ax.set_title(f"{fit.metric.upper()} over the weight grid ({fit.lists:,} lists; base scores "
                 f"alone {format_value(fit.metric, fit.baseline)}, oracle "
                 f"{format_value(fit.metric, fit.oracle)})", fontsize="medium")
    fig.savefig(path, format="png")


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


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction between 0 and 1")
    return value


def summary(fit: TuningResult, doc: NbestDocument, prior: RankPrior, model: str,
            holdout: dict[str, Any] | None = None) -> dict[str, Any]:
    """What --out and the manifest record; ``value``, ``baseline``, ``oracle`` are on the lists
    fitted on, ``holdout`` (when asked for) has the same on the held-out ones."""
    facts = {"lm_weight": fit.weights.lm_weight, "length_bonus": fit.weights.length_bonus,
             "rank_prior": prior, "metric": fit.metric, "value": fit.value,
             "baseline": fit.baseline, "oracle": fit.oracle, "lists": fit.lists,
             "dev_set": doc.name, "model": model}
    return {**facts, "holdout": holdout} if holdout else facts


def fit_and_hold_out(m: NbestMatrix, ids: list[str], grid: AnyGrid | None,
                     fraction: float | None) -> tuple[NbestMatrix, TuningResult,
                                                      dict[str, Any] | None]:
    """(the lists fitted on, the fit, the figures on the held-out lists): with a ``fraction``
    the fit sees only the lists :func:`~service.rerank.tuning.held_out` keeps out, and is measured on
    those (base scores alone, with the fitted weights, oracle); without one, on all lists."""
    if fraction is None:
        return m, grid_search(m, grid), None
    held = held_out(ids, fraction)
    if held.all() or not held.any():
        raise ValueError(f"--holdout {fraction:g} holds out {int(held.sum())} of {m.lists:,} "
                         "lists: fitting and reporting both need lists; use another fraction "
                         "or more lists")
    fitted_on, report = m.subset(~held), m.subset(held)
    fit = grid_search(fitted_on, grid)
    return fitted_on, fit, {
        "fraction": fraction, "split": "blake2b-64 of the list id", "lists": report.lists,
        "baseline": corpus_value(report, choose(report, Weights(0.0, 0.0))),
        "value": corpus_value(report, choose(report, fit.weights)),
        "oracle": oracle_value(report)}


def save_to_artifact(folder: Path, fit: TuningResult, facts: dict[str, Any]) -> Path:
    """Set the manifest's rerank defaults (what serve and rerank use) and record the fit."""
    manifest = load_manifest(folder)
    return write_manifest(folder, manifest.with_rerank(
        fit.weights.lm_weight, fit.weights.length_bonus, facts["rank_prior"],
        evaluation={**manifest.evaluation, "rerank_tuning": facts}))


def _figures(metric: str, baseline: float, value: float, oracle: float) -> str:
    return (f"base scores alone {format_value(metric, baseline)}, "
            f"tuned {format_value(metric, value)}, oracle {format_value(metric, oracle)}")


@reports_errors("tune")
def run(args: argparse.Namespace) -> int:
    if args.write_artifact == "" and args.url:
        raise ValueError("with --url, --write-artifact needs the artifact folder to write")
    metric = metric_named(args.metric)
    grid = _grid(args)
    if args.plot:
        require_matplotlib()
    doc = load_document(args)
    scorer = open_scorer(args)
    try:
        scores = score_document(doc, scorer, args.truncate, args.progress)
        defaults = scorer.defaults()
    finally:
        scorer.close()
    prior = resolve_weights(defaults, rank_prior=args.rank_prior).rank_prior
    source = "given" if args.rank_prior else f"{scorer.name}'s manifest"
    lists, where = tuning_lists(doc, scores, prior)
    if not lists:
        raise ValueError(f"{doc.name}: no list has both a reference and a hypothesis; "
                         "give references with --ref")
    fitted_on, fit, holdout = fit_and_hold_out(nbest_matrix(lists, metric),
                                                [doc.lists[i].id for i in where], grid,
                                                args.holdout)
    print(format_grid(fit))
    print(f"\n{len(lists):,} lists ({len(doc.lists) - len(lists):,} without a reference "
          f"left out), rank prior {prior} ({source})")
    if holdout:
        print(f"fitted on {fit.lists:,}: "
              + _figures(fit.metric, fit.baseline, fit.value, fit.oracle))
        print(f"held out {holdout['lists']:,} (--holdout {args.holdout:g}, by a hash of the "
              "list id): "
              + _figures(fit.metric, holdout["baseline"], holdout["value"], holdout["oracle"]))
    else:
        print(_figures(fit.metric, fit.baseline, fit.value, fit.oracle))
    print(f"chosen: lm_weight {fit.weights.lm_weight:.6g}, "
          f"length_bonus {fit.weights.length_bonus:.6g}")
    if args.plot:  # before any refusal below: the picture helps to see why
        plot_grid(fit, args.plot)
        print(f"wrote {args.plot} (the grid as a heat map)")
    writes = bool(args.out) or args.write_artifact is not None
    if not electric_matters(fitted_on, fit.weights) and not args.allow_zero_lm_weight:
        off = (f"lm_weight {fit.weights.lm_weight:.6g} switches Electric off: every list picks "
               f"what it picks without Electric's score (rank prior {prior})")
        if writes:
            raise ValueError(f"{off}; not writing it (pass --allow-zero-lm-weight to write it "
                             "anyway, or check --rank-prior and the dev set)")
        print(f"note: {off}; --out and --write-artifact would refuse it without "
              "--allow-zero-lm-weight")
    facts = summary(fit, doc, prior, scorer.name, holdout)
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
    p.add_argument("--holdout", type=_fraction, nargs="?", const=DEFAULT_HOLDOUT, default=None,
                   metavar="FRACTION",
                   help="fit on the other lists and report on this fraction of them, chosen by "
                        f"a hash of the list id (no FRACTION: {DEFAULT_HOLDOUT})")
    p.add_argument("--allow-zero-lm-weight", action="store_true",
                   help="write weights even when they switch Electric off (lm_weight 0, or "
                        "no list's choice changes)")
    p.add_argument("--out", type=Path, help="write the chosen weights and figures as JSON")
    p.add_argument("--plot", type=Path, metavar="PATH",
                   help="draw the grid as a heat map PNG, the chosen point marked (needs "
                        "matplotlib)")
    p.add_argument("--write-artifact", nargs="?", const="", default=None, metavar="DIR",
                   help="write the weights into DIR/electric.json's rerank section (no DIR: "
                        "the artifact that scored)")
    add_scorer_arguments(p)
    p.set_defaults(func=run)

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

Fitting and reporting on the same lists flatters the result. Beside the in-sample figure the
command prints the k-fold held-out one (``--folds``, default 5: each fold of lists re-ranked by
weights fitted on the others; service/rerank/transfer.py), and ``--holdout FRACTION`` fits on
the other lists and reports the metric before and after on the held-out ones (a list is held
out by the hash of its id: service/rerank/tuning.py ``held_out``).

Weights fitted on one domain can harm another. ``--cross DEV2`` scores a second dev file of
the same format (another domain) and prints each file's fit applied to the other; the weights
chosen and written are then the safe choice for both (transfer.py ``safe_fit``): the grid point
that helps the domain it helps least as much as possible, kept only if the k-fold figure of
that rule is no worse than the base scores alone on either file, else ``lm_weight`` 0 (base
scores, or the rank prior, alone: the model then does not change a default re-ranking). That
fall-back is written without ``--allow-zero-lm-weight``: it is the rule's answer, not a
mistake.
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
from service.rerank.nbest import NbestDocument, ReadOptions, read_nbest
from service.rerank.transfer import DEFAULT_FOLDS, HeldOut, SafeFit, kfold, safe_fit, transfer
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


def summary(
    fit: TuningResult,
    doc: NbestDocument,
    prior: RankPrior,
    model: str,
    holdout: dict[str, Any] | None = None,
    **more: Any,
) -> dict[str, Any]:
    """What --out and the manifest record; ``value``, ``baseline``, ``oracle`` are on the lists
    fitted on, ``holdout`` (when asked for) has the same on the held-out ones, ``more`` the
    k-fold and cross-domain figures."""
    facts: dict[str, Any] = {
        "lm_weight": fit.weights.lm_weight,
        "length_bonus": fit.weights.length_bonus,
        "rank_prior": prior,
        "metric": fit.metric,
        "value": fit.value,
        "baseline": fit.baseline,
        "oracle": fit.oracle,
        "lists": fit.lists,
        "dev_set": Path(doc.name).name,  # the file, not where it lay
        "model": model,
    }
    facts = {**facts, "holdout": holdout} if holdout else facts
    return {**facts, **{k: v for k, v in more.items() if v is not None}}


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


def save_to_artifact(folder: Path, weights: Weights, facts: dict[str, Any]) -> Path:
    """Set the manifest's rerank defaults (what serve and rerank use) and record the fit."""
    manifest = load_manifest(folder)
    return write_manifest(
        folder,
        manifest.with_rerank(
            weights.lm_weight,
            weights.length_bonus,
            facts["rank_prior"],
            evaluation={**manifest.evaluation, "rerank_tuning": facts},
        ),
    )


def _figures(metric: str, baseline: float, value: float, oracle: float | None = None) -> str:
    return (
        f"base scores alone {format_value(metric, baseline)}, "
        f"tuned {format_value(metric, value)}"
        + (f", oracle {format_value(metric, oracle)}" if oracle is not None else "")
    )


def _kfold(m: NbestMatrix, ids: list[str], grid: AnyGrid | None, folds: int) -> HeldOut | None:
    """The k-fold held-out figure, or None where it is switched off or the lists are too few
    (fewer than two a fold)."""
    if folds < 2 or m.lists < 2 * folds:
        return None
    return kfold(m, ids, grid, folds)


def _held_line(metric: str, held: HeldOut | None, folds: int) -> str:
    if held is None:
        return (
            f"k-fold held out: off (--folds {folds})"
            if folds < 2
            else f"k-fold held out: too few lists for {folds} folds"
        )
    return (
        f"{held.folds}-fold held out (each fold re-ranked by weights fitted on the others): "
        f"{_figures(metric, held.baseline, held.value)} ({100 * held.gain:+.1f}% relative)"
    )


def _held_facts(held: HeldOut | None) -> dict[str, Any] | None:
    return (
        None
        if held is None
        else {
            "folds": held.folds,
            "lists": held.lists,
            "baseline": held.baseline,
            "value": held.value,
            "split": "blake2b-64 of the list id, modulo folds",
        }
    )


def _weights_text(w: Weights) -> str:
    return f"lm_weight {w.lm_weight:.6g}, length_bonus {w.length_bonus:.6g}"


def _cross(
    args: argparse.Namespace,
    metric: str,
    first: tuple[str, NbestMatrix, list[str]],
    second: tuple[str, NbestMatrix, list[str]],
    grid: AnyGrid | None,
    fit: TuningResult,
) -> tuple[SafeFit, dict[str, Any]]:
    """Print each file's fit on the other and the safe choice for both; return the choice and
    what the record keeps of it."""
    (name_a, a, ids_a), (name_b, b, ids_b) = first, second
    fit_b = grid_search(b, grid)
    held_b = _kfold(b, ids_b, grid, args.folds)
    a_on_b, b_on_a = transfer(fit.weights, b), transfer(fit_b.weights, a)
    print(f"\ncross-domain, {name_b} ({b.lists:,} lists):")
    print(
        f"  fitted on {name_b}: {_weights_text(fit_b.weights)}: "
        + _figures(metric, fit_b.baseline, fit_b.value, fit_b.oracle)
    )
    print("  " + _held_line(metric, held_b, args.folds))
    print(
        f"  {name_a}'s weights on {name_b}: {_figures(metric, a_on_b.baseline, a_on_b.value)} "
        f"({100 * a_on_b.gain:+.1f}% relative)"
    )
    print(
        f"  {name_b}'s weights on {name_a}: {_figures(metric, b_on_a.baseline, b_on_a.value)} "
        f"({100 * b_on_a.gain:+.1f}% relative)"
    )
    safe = safe_fit([a, b], [ids_a, ids_b], args.folds if args.folds >= 2 else DEFAULT_FOLDS, grid)
    gains = ", ".join(f"{n} {100 * g:+.1f}%" for n, g in zip((name_a, name_b), safe.point.gains))
    print(
        f"safe choice for both (best worst-domain gain): {_weights_text(safe.point.weights)} "
        f"({gains} on all lists)"
    )
    for n, h in zip((name_a, name_b), safe.held_out):
        print(
            f"  the same rule {h.folds}-fold held out on {n}: {_figures(metric, h.baseline, h.value)} "
            f"({100 * h.gain:+.1f}% relative)"
        )
    if safe.weights.lm_weight == 0.0:
        why = (
            "its held-out figure is worse than the base scores alone on "
            + " and ".join(n for n, h in zip((name_a, name_b), safe.held_out) if h.gain < 0)
            if safe.fell_back
            else "no grid point helps both"
        )
        print(f"=> lm_weight 0 (base scores alone): {why}")
    facts = {
        "cross_domain": {
            "dev_set": name_b,
            "lists": b.lists,
            "fitted": {
                "lm_weight": fit_b.weights.lm_weight,
                "length_bonus": fit_b.weights.length_bonus,
                "baseline": fit_b.baseline,
                "value": fit_b.value,
            },
            "kfold": _held_facts(held_b),
            "first_on_second": {"baseline": a_on_b.baseline, "value": a_on_b.value},
            "second_on_first": {"baseline": b_on_a.baseline, "value": b_on_a.value},
        },
        "safe": {
            "rule": "best worst-domain relative gain, then mean, then smaller lm_weight; "
            "lm_weight 0 where its k-fold figure is worse than the base scores "
            "alone on any dev set",
            "point": {
                "lm_weight": safe.point.weights.lm_weight,
                "length_bonus": safe.point.weights.length_bonus,
                "gains": dict(zip((name_a, name_b), safe.point.gains)),
            },
            "kfold": {n: _held_facts(h) for n, h in zip((name_a, name_b), safe.held_out)},
            "fell_back": safe.fell_back,
        },
    }
    return safe, facts


def _matrix(
    doc: NbestDocument, scores: dict[str, Any], prior: RankPrior, metric: str
) -> tuple[NbestMatrix, list[str]]:
    lists, where = tuning_lists(doc, scores, prior)
    if not lists:
        raise ValueError(
            f"{doc.name}: no list has both a reference and a hypothesis; give references with --ref"
        )
    return nbest_matrix(lists, metric_named(metric)), [doc.lists[i].id for i in where]


@reports_errors("tune")
def run(args: argparse.Namespace) -> int:
    if args.write_artifact == "" and args.url:
        raise ValueError("with --url, --write-artifact needs the artifact folder to write")
    if args.cross and args.holdout:
        raise ValueError("--cross and --holdout: choose one (--cross reports k-fold figures)")
    metric = metric_named(args.metric).name
    grid = _grid(args)
    if args.plot:
        require_matplotlib()
    doc = load_document(args)
    cross_doc = (
        read_nbest(args.format, args.cross, ReadOptions(references=args.cross_ref))
        if args.cross
        else None
    )
    scorer = open_scorer(args)
    try:
        scores = score_document(doc, scorer, args.truncate, args.progress)
        cross_scores = (
            score_document(cross_doc, scorer, args.truncate, args.progress) if cross_doc else {}
        )
        defaults = scorer.defaults()
    finally:
        scorer.close()
    prior = resolve_weights(defaults, rank_prior=args.rank_prior).rank_prior
    source = "given" if args.rank_prior else f"{scorer.name}'s manifest"
    m, ids = _matrix(doc, scores, prior, metric)
    fitted_on, fit, holdout = fit_and_hold_out(m, ids, grid, args.holdout)
    held = _kfold(
        fitted_on,
        [i for i, out in zip(ids, _held_mask(ids, args.holdout)) if not out],
        grid,
        args.folds,
    )
    print(format_grid(fit))
    print(
        f"\n{m.lists:,} lists ({len(doc.lists) - m.lists:,} without a reference "
        f"left out), rank prior {prior} ({source})"
    )
    print(
        f"in sample, fitted on {fit.lists:,}: "
        + _figures(fit.metric, fit.baseline, fit.value, fit.oracle)
    )
    print(_held_line(fit.metric, held, args.folds))
    if holdout:
        print(
            f"held out {holdout['lists']:,} (--holdout {args.holdout:g}, by a hash of the "
            "list id): "
            + _figures(fit.metric, holdout["baseline"], holdout["value"], holdout["oracle"])
        )
    chosen, more = fit.weights, {"kfold": _held_facts(held)}
    safe = None
    if cross_doc is not None:
        cm, cids = _matrix(cross_doc, cross_scores, prior, metric)
        safe, cross_facts = _cross(
            args,
            metric,
            (Path(doc.name).name, m, ids),
            (Path(cross_doc.name).name, cm, cids),
            grid,
            fit,
        )
        chosen, more = safe.weights, {**more, **cross_facts}
    print(f"chosen: {_weights_text(chosen)}")
    if args.plot:  # before any refusal below: the picture helps to see why
        plot_grid(fit, args.plot)
        print(f"wrote {args.plot} (the grid as a heat map)")
    writes = bool(args.out) or args.write_artifact is not None
    if safe is None and not electric_matters(fitted_on, chosen) and not args.allow_zero_lm_weight:
        off = (
            f"lm_weight {chosen.lm_weight:.6g} switches Electric off: every list picks "
            f"what it picks without Electric's score (rank prior {prior})"
        )
        if writes:
            raise ValueError(
                f"{off}; not writing it (pass --allow-zero-lm-weight to write it "
                "anyway, or check --rank-prior and the dev set)"
            )
        print(
            f"note: {off}; --out and --write-artifact would refuse it without "
            "--allow-zero-lm-weight"
        )
    facts = {
        **summary(fit, doc, prior, scorer.name, holdout, **more),
        "lm_weight": chosen.lm_weight,
        "length_bonus": chosen.length_bonus,
    }
    if args.out:
        args.out.write_text(json.dumps(facts, indent=2) + "\n")
        print(f"wrote {args.out}")
    if args.write_artifact is not None:
        folder = Path(args.write_artifact) if args.write_artifact else (
            args.artifact or default_artifact())
        print(f"wrote {save_to_artifact(folder, chosen, facts)} (rerank section)")
    return 0


def _held_mask(ids: list[str], fraction: float | None) -> np.ndarray:
    """(L,) True for the lists ``--holdout`` keeps out of the fit (none without it)."""
    return held_out(ids, fraction) if fraction is not None else np.zeros(len(ids), dtype=bool)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tune",
        help="fit lm_weight and length_bonus on a dev n-best file",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="dev n-best file with references (- for stdin)")
    add_nbest_arguments(p)
    p.add_argument(
        "--lm-weights",
        type=_numbers,
        metavar="W1,W2,...",
        help="search these lm_weight values (default: a grid scaled to the scores)",
    )
    p.add_argument(
        "--length-bonuses",
        type=_numbers,
        metavar="B1,B2,...",
        help="with --lm-weights: these length_bonus values (default 0)",
    )
    p.add_argument(
        "--holdout",
        type=_fraction,
        nargs="?",
        const=DEFAULT_HOLDOUT,
        default=None,
        metavar="FRACTION",
        help="fit on the other lists and report on this fraction of them, chosen by "
        f"a hash of the list id (no FRACTION: {DEFAULT_HOLDOUT})",
    )
    p.add_argument(
        "--folds",
        type=int,
        default=DEFAULT_FOLDS,
        metavar="K",
        help="k-fold held-out figure beside the in-sample one: each of K folds of "
        f"lists re-ranked by weights fitted on the others (default "
        f"{DEFAULT_FOLDS}; 0 switches it off)",
    )
    p.add_argument(
        "--cross",
        type=Path,
        metavar="DEV2",
        help="a second dev file of the same format (another domain): print each "
        "file's weights on the other and choose weights safe for both",
    )
    p.add_argument(
        "--cross-ref",
        type=Path,
        metavar="FILE",
        help="references of --cross, as --ref for the first file",
    )
    p.add_argument(
        "--allow-zero-lm-weight",
        action="store_true",
        help="write weights even when they switch Electric off (lm_weight 0, or "
        "no list's choice changes)",
    )
    p.add_argument("--out", type=Path, help="write the chosen weights and figures as JSON")
    p.add_argument(
        "--plot",
        type=Path,
        metavar="PATH",
        help="draw the grid as a heat map PNG, the chosen point marked (needs matplotlib)",
    )
    p.add_argument(
        "--write-artifact",
        nargs="?",
        const="",
        default=None,
        metavar="DIR",
        help="write the weights into DIR/electric.json's rerank section (no DIR: "
        "the artifact that scored)",
    )
    add_scorer_arguments(p)
    p.set_defaults(func=run)

"""The ``electric eval`` results as Markdown tables, a per-paradigm chart (``--plot``), and the
summary that goes into a manifest."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.sets import FILES


def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"


def _num(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def _relative(r: dict[str, Any], key: str) -> str:
    return (_num(100 * r[key]["relative_wer_reduction"], "+.1f") + "%") if key in r else "-"


def format_table(results: dict[str, Any]) -> str:
    """The results as markdown: a summary table, then ASR weights, Zorro per paradigm, agreement."""
    scorers: dict[str, Any] = results["scorers"]
    ted = any("asr_ted" in r for r in scorers.values())
    lines = _table(
        [
            "scorer",
            "ASR WER beam 1-best",
            "ASR WER re-ranked",
            "rel. WER reduction",
            *(["TED-LIUM WER beam -> re-ranked", "TED-LIUM rel."] if ted else []),
            "Zorro accuracy",
            "MT pairwise accuracy",
            "seconds",
        ],
        [
            [
                name,
                _pct(r.get("asr", {}).get("wer_beam")),
                _pct(r.get("asr", {}).get("wer_reranked")),
                _relative(r, "asr"),
                *(
                    [
                        " -> ".join(
                            (
                                _pct(r.get("asr_ted", {}).get("wer_beam")),
                                _pct(r.get("asr_ted", {}).get("wer_reranked")),
                            )
                        ),
                        _relative(r, "asr_ted"),
                    ]
                    if ted
                    else []
                ),
                _num(r.get("zorro", {}).get("accuracy")),
                _num(r.get("mt", {}).get("pairwise_accuracy")),
                _num(r["seconds"].get("total"), ".0f"),
            ]
            for name, r in scorers.items()
        ],
    )
    first: dict[str, Any] = next(iter(scorers.values()), {})
    notes = []
    if "asr" in first:
        a = first["asr"]
        notes.append(
            f"ASR: WER on the {a['lists_report']} lists of the reporting half; prior "
            f"and weights fitted on the other {a['lists_tune']} (split by a hash of the "
            f"id). Oracle WER {_pct(a['wer_oracle'])}."
        )
    if "asr_ted" in first:
        a = first["asr_ted"]
        notes.append(
            f"TED-LIUM: the same on its own halves ({a['lists_report']} reported, "
            f"{a['lists_tune']} fitted on). Oracle WER {_pct(a['wer_oracle'])}."
        )
    shipped = [
        (key, label, first[key]["defaults"])
        for key, label in (("asr", "Common Voice"), ("asr_ted", "TED-LIUM"))
        if "defaults" in first.get(key, {})
    ]
    if shipped:
        d = shipped[0][2]
        notes.append(
            f"With the artifact's defaults (lm_weight {d['lm_weight']:.4g}, "
            f"length_bonus {d['length_bonus']:.4g}, rank prior {d['rank_prior']}), "
            "all lists: "
            + "; ".join(
                f"{label} {_pct(x['wer_beam'])} -> {_pct(x['wer_reranked'])}"
                for _, label, x in shipped
            )
            + "."
        )
    if "zorro" in first:
        sample = (
            f"a sample of {results['limit_pairs']} stratified by paradigm, seed {results['seed']}"
            if results.get("limit_pairs")
            else "all pairs"
        )
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
                         "tuning half: beam -> re-ranked", "pairwise accuracy",
                         "against the 1-best"],
                        [[name, r["asr"]["rank_prior"], _num(r["asr"]["lm_weight"], ".4g"),
                          _num(r["asr"]["length_bonus"], ".4g"),
                          " -> ".join((_pct(r["asr"]["wer_tune_beam"]),
                                       _pct(r["asr"]["wer_tune_reranked"]))),
                          _num(r["asr"].get("pairwise_accuracy")),
                          _num(r["asr"].get("pairwise_accuracy_against_beam"))]
                         for name, r in scorers.items()])
        a = first["asr"]
        if "pairs" in a:
            lines += ["", (f"Pairwise: the score alone (no prior, no fitting) on {a['pairs']} "
                           "pairs of same-length hypotheses with different word errors, all "
                           f"lists; {a['pairs_against_beam']} of them against the 1-best.")]
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
    machine = results.get("measured_on")
    if machine:
        flags = " ".join(machine["cpu_flags"]) or "unknown"
        lines += ["", f"Measured on: {machine['cpu']} ({machine['machine']}), CPU flags {flags}"]
    lines += ["", f"Wall time: {results['wall_seconds']:.0f} s"
              + "".join(f"; {k} {v:.0f} s" for k, v in results.get("setup_seconds", {}).items())]
    return "\n".join(lines)


def plot_paradigms(results: dict[str, Any], path: Path) -> None:
    """Zorro minimal-pair accuracy per paradigm as a horizontal bar chart (PNG): a bar per
    paradigm for the first scorer, sorted (best at the top), its overall accuracy as a line,
    chance (0.5) dashed, and every other scorer's accuracy as a marker on the same rows.

    Only matplotlib's Agg canvas, imported here: no display and no pyplot state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scorers: dict[str, Any] = results["scorers"]
    main, *others = [n for n, r in scorers.items() if "zorro" in r]
    zorro = scorers[main]["zorro"]
    per = zorro["per_paradigm"]
    order = sorted(per, key=lambda p: (per[p]["accuracy"], p))  # barh draws upwards
    rows = range(len(order))
    fig = Figure(figsize=(8.0, 1.5 + 0.28 * len(order)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(rows, [per[p]["accuracy"] for p in order], color="#4c72b0", label=main)
    markers = "os^Dv<>P"
    for k, name in enumerate(others):
        theirs = scorers[name]["zorro"]["per_paradigm"]
        ax.scatter([theirs[p]["accuracy"] if p in theirs else math.nan for p in order], rows,
                   marker=markers[k % len(markers)], s=22, zorder=3,
                   color=f"C{k % 9 + 1}", label=name)
    ax.axvline(zorro["accuracy"], color="black", linewidth=1.2,
               label=f"{main}: overall {zorro['accuracy']:.3f} ({zorro['pairs']} pairs)")
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_yticks(list(rows))
    ax.set_yticklabels([f"{p} ({per[p]['pairs']})" for p in order], fontsize="small")
    ax.set_xlim(0.0, 1.02)  # room for a marker at 1.0
    ax.set_xlabel("accuracy (good sentence scored above bad; a tie is wrong)")
    ax.set_title("Zorro minimal pairs per paradigm (pairs in brackets)", fontsize="medium")
    ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path, format="png")


def manifest_summary(results: dict[str, Any], name: str) -> dict[str, Any]:
    """The compact figures of scorer ``name`` (and all others) that go into electric.json."""
    def brief(r: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ("asr", "asr_ted"):
            if key in r:
                out[key] = {
                    k: r[key][k]
                    for k in (
                        "wer_beam",
                        "wer_reranked",
                        "wer_oracle",
                        "relative_wer_reduction",
                        "rank_prior",
                        "lm_weight",
                        "length_bonus",
                        "lists_report",
                        "defaults",
                    )
                    if k in r[key]
                }
        if "zorro" in r:
            out["zorro_accuracy"] = r["zorro"]["accuracy"]
            out["zorro_pairs"] = r["zorro"]["pairs"]
        if "mt" in r:
            out["mt_pairwise_accuracy"] = r["mt"]["pairwise_accuracy"]
        return out

    return {
        "dev_sets": [FILES[m] for m in results["measures"]],
        "scorer": name,
        **brief(results["scorers"][name]),
        "baselines": {k: brief(v) for k, v in results["scorers"].items() if k != name},
        "agreement": results.get("agreement", []),
        **({"measured_on": results["measured_on"]} if "measured_on" in results else {}),
    }

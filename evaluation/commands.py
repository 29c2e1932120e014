"""``electric eval ARTIFACT``: build the scorers, run evaluation.evaluate, print the tables."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from evaluation.evaluate import CORE_MEASURES, MEASURES, OPTIONAL_MEASURES, evaluate
from evaluation.report import format_table, manifest_summary, plot_paradigms
from evaluation.scorers import Scorer
from evaluation.sets import EVAL_DIR_VARIABLE, FILES, resolve_eval_dir


def _build_scorers(args: argparse.Namespace, folder: Path, eval_dir: Path,
                   setup: dict[str, float]) -> tuple[dict[str, Scorer], list[tuple[str, str]]]:
    from evaluation.scorers import ArtifactScorer
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

    from evaluation.kneser_ney import KneserNey
    from evaluation.scorers import (
        NgramPLLScorer,
        TorchEnergyScorer,
        ngram_cloze_from_corpora,
        warm_start_model,
    )
    from model_export.warmstart import resolve_warm_start

    if args.threads:
        torch.set_num_threads(args.threads)
    corpora = ([Path(p) for p in args.corpora] if args.corpora
               else sorted((eval_dir.parent / "corpora").glob("*.txt.gz")))
    if not corpora:
        raise SystemExit(f"electric eval: --baselines needs corpora: none given with --corpora and no *.txt.gz "
                         f"in {eval_dir.parent / 'corpora'}")
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
    from evaluation.scorers import NgramPLLScorer, NoisePLLScorer, has_noise_weights
    from model_export.checkpoint import load_checkpoint_model
    from model_export.ngram import NgramCloze

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
    from service.scoring import Weights

    folder = Path(args.artifact)
    given = args.measures is not None
    measures = args.measures if given else list(CORE_MEASURES)
    if args.plot:  # before the minutes of scoring, not after them
        if "zorro" not in measures:
            raise SystemExit("electric eval: --plot draws Zorro's per-paradigm accuracy; "
                             "add zorro to --measures")
        import matplotlib  # noqa: F401  (missing: electric's main() names the extra)
    try:
        eval_dir = resolve_eval_dir(args.eval_dir, measures)
    except FileNotFoundError as exc:
        raise SystemExit(f"electric eval: {exc}") from None
    if not given:  # an optional set joins where its file is there
        measures = [m for m in MEASURES if m in measures or (eval_dir / FILES[m]).is_file()]
    setup: dict[str, float] = {}
    scorers, compare = _build_scorers(args, folder, eval_dir, setup)
    shipped = Weights.of_manifest(load_manifest(folder))
    results = evaluate(
        scorers,
        eval_dir,
        limit_pairs=args.limit_pairs,
        seed=args.seed,
        measures=measures,
        compare=compare,
        defaults={name: shipped for name in scorers if name.startswith("electric ")},
    )
    results["artifact"] = str(folder)
    results["setup_seconds"] = {k: round(v, 1) for k, v in setup.items()}
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if args.plot:
        plot_paradigms(results, Path(args.plot))
        print(f"\nwrote {args.plot} (Zorro accuracy per paradigm)")
    if args.update_manifest:
        # The figures only: the re-ranking defaults come from `electric tune --cross`, which
        # checks them on every domain; one domain's fit here could harm another.
        main = next(iter(results["scorers"]))
        manifest = load_manifest(folder)
        evaluation = {**manifest.evaluation, **manifest_summary(results, main)}
        write_manifest(folder, manifest.model_copy(update={"evaluation": evaluation}))
        print(
            f"\nwrote the figures of {main!r} into {folder}/electric.json (its rerank "
            "defaults stay as they are: electric tune --cross sets them)"
        )
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


def register(sub: Any) -> None:
    """Add ``electric eval`` to the ``electric`` parser."""
    p = sub.add_parser(
        "eval",
        help="measure an artifact on the dev sets (ASR, Zorro, MT), "
        "optionally beside the baselines",
    )
    p.add_argument("artifact", help="artifact folder")
    p.add_argument(
        "--eval-dir",
        help=f"folder of the three dev sets (default: ${EVAL_DIR_VARIABLE}, "
        "else shared/eval beside the project folder)",
    )
    p.add_argument(
        "--variants",
        type=_variant_list,
        help="comma-separated variants to measure (default: fp32,int8 where present)",
    )
    p.add_argument(
        "--baselines",
        action="store_true",
        help="also: warm start with a random head, the noise model's one-pass PLL, "
        "a Kneser-Ney 4-gram LM",
    )
    p.add_argument(
        "--corpora",
        nargs="+",
        help="training text for the KN LM and n-gram cloze (default: *.txt.gz in "
        "the corpora folder beside the dev sets' folder)",
    )
    p.add_argument(
        "--checkpoint",
        help="the run's final.safetensors: its noise model is the "
        "PLL baseline (default: an n-gram cloze on --corpora)",
    )
    p.add_argument("--warm-start", default="minilm", help="folder of the warm start baseline")
    p.add_argument("--limit-pairs", type=int, help="a seeded sample of this many Zorro pairs")
    p.add_argument(
        "--measures",
        type=_measure_list,
        default=None,
        help=f"comma-separated subset of {','.join(MEASURES)} (default: all, "
        f"{','.join(OPTIONAL_MEASURES)} where its file is present)",
    )
    p.add_argument("--seed", type=int, default=0, help="Zorro sample and random head seed")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--json", help="also write every figure to this JSON file")
    p.add_argument(
        "--plot",
        metavar="PATH",
        help="draw Zorro accuracy per paradigm as a bar chart PNG (needs matplotlib)",
    )
    p.add_argument(
        "--update-manifest",
        action="store_true",
        help="write the first variant's figures into electric.json (not its weights: "
        "electric tune --cross sets those)",
    )
    p.set_defaults(func=_eval)

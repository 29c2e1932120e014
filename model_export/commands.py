"""``electric train | train-shard | export | import | verify``: the model commands.

Nothing here imports torch at module level: the serving CLI registers these sub-commands even
where only the serving extras are installed, and torch is loaded when one of them runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.artifact import VariantName


def _parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are read as JSON where they parse, else kept as text."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _variants(text: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in names if v not in ("fp32", "fp16", "int8")]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown variants {bad}; choose from fp32, fp16, int8")
    return names


def _train(args: argparse.Namespace) -> int:
    from model_export.config import preset
    from model_export.train import train

    cfg = preset(args.preset, **_parse_overrides(args.set))
    run_dir = Path(args.run_dir)
    final = train(cfg, [Path(p) for p in args.corpora or []], run_dir,
                  _train_tokenizer(args.tokenizer, cfg.warm_start or cfg.init_from, run_dir),
                  shard=Path(args.shard) if args.shard else None)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun: rank 0 reports and exports
    print(f"final checkpoint: {final}")
    if args.export:
        # The text the model was trained on is the natural calibration text for its int8.
        _export_checkpoint(final, Path(args.export), args.name, args.variants,
                           _int8_options(args, default_calibration=args.corpora))
    return 0


def _train_shard(args: argparse.Namespace) -> int:
    from model_export.config import preset
    from model_export.shard import build_shard, shard_paths

    cfg = preset(args.preset, **_parse_overrides(args.set))
    tokenizer = args.tokenizer and Path(args.tokenizer)
    if not tokenizer:
        from model_export.config import MINILM
        from model_export.warmstart import resolve_warm_start

        warm = resolve_warm_start(cfg.warm_start or MINILM)
        assert warm is not None
        tokenizer = warm / "tokenizer.json"
    if args.max_tokens < 0:
        raise SystemExit(f"--max-tokens {args.max_tokens} must be >= 0 (0: no cap)")
    meta = build_shard(cfg, [Path(p) for p in args.corpora], tokenizer, Path(args.out),
                       max_tokens=args.max_tokens, seed=args.seed,
                       cache_path=Path(args.cache) if args.cache else None)
    arrays, _ = shard_paths(Path(args.out))
    print(f"wrote {arrays} ({arrays.stat().st_size / 2**20:.1f} MiB): "
          f"{meta['tokens']['train']:,} training and {meta['tokens']['heldout']:,} held-out "
          f"tokens in {sum(meta['sequences'].values()):,} sequences")
    return 0


def _train_tokenizer(given: str | None, warm_start: str, run_dir: Path) -> Path | None:
    """--tokenizer; else the run's own copy (a resumed run); else the warm start's or init_from
    run's (None lets train() find it); else, for presets trained from scratch, the bundled
    MiniLM WordPiece."""
    from model_export.config import MINILM
    from model_export.warmstart import resolve_warm_start

    if given:
        return Path(given)
    if (run_dir / "tokenizer.json").is_file():
        return run_dir / "tokenizer.json"
    if warm_start:
        return None
    bundled = resolve_warm_start(MINILM)
    return bundled / "tokenizer.json" if bundled else None


def _int8_options(args: argparse.Namespace, default_calibration: list[str] | None = None
                  ) -> dict[str, Any]:
    """``export_artifact``'s int8 arguments from --int8-scheme / --calibration."""
    if "int8" not in args.variants or args.int8_scheme != "rowwise":
        return {"int8_scheme": args.int8_scheme}
    files = args.calibration or default_calibration
    if not files:
        raise SystemExit("--int8-scheme rowwise calibrates on text: pass --calibration FILE... "
                         "(e.g. the training corpora, *.txt or *.txt.gz, one sentence a line), "
                         "or choose --int8-scheme dynamic")
    from model_export.calibration import read_sentences

    return {"int8_scheme": "rowwise", "calibration": read_sentences([Path(f) for f in files])}


def _export_checkpoint(checkpoint: Path, out: Path, name: str | None,
                       variants: tuple[VariantName, ...], int8: dict[str, Any]) -> None:
    from model_export.checkpoint import load_checkpoint_model
    from model_export.export import export_artifact

    model, cfg, facts = load_checkpoint_model(checkpoint)
    if not facts.get("tokenizer_path"):
        raise SystemExit(f"{checkpoint}: no tokenizer recorded beside the checkpoint; "
                         "the run folder's config.json must name tokenizer_path")
    manifest = export_artifact(model, cfg, Path(facts["tokenizer_path"]), out,
                               name=name or out.name, variants=variants,
                               training=facts.get("training"), **int8)
    _print_export(out, manifest)


def _print_export(out: Path, manifest: Any) -> None:
    fused = manifest.training.get("onnx", {}).get("fused_ops", {})
    print(f"wrote {out} with variants {sorted(manifest.variants)}")
    if fused:
        print("fused ops: " + ", ".join(f"{op} {n}" for op, n in sorted(fused.items())))


def _export(args: argparse.Namespace) -> int:
    _export_checkpoint(Path(args.checkpoint), Path(args.out), args.name, args.variants,
                       _int8_options(args))
    return 0


def _import(args: argparse.Namespace) -> int:
    from model_export.export import export_artifact
    from model_export.hf_import import import_electra_discriminator

    folder = Path(args.folder)
    model, cfg, facts = import_electra_discriminator(folder)
    out = Path(args.out)
    manifest = export_artifact(model, cfg, _hf_tokenizer(folder), out,
                               name=args.name or out.name, variants=args.variants,
                               energy_source="discriminator_logit", training=facts,
                               **_int8_options(args))
    _print_export(out, manifest)
    return 0


def _hf_tokenizer(folder: Path) -> Path:
    """The folder's tokenizer.json, or one built from its WordPiece vocab.txt (older exports)."""
    if (folder / "tokenizer.json").is_file():
        return folder / "tokenizer.json"
    vocab = folder / "vocab.txt"
    if not vocab.is_file():
        raise SystemExit(f"{folder} has neither tokenizer.json nor vocab.txt")
    from tokenizers import BertWordPieceTokenizer

    lowercase = True
    config = folder / "tokenizer_config.json"
    if config.is_file():
        lowercase = bool(json.loads(config.read_text()).get("do_lower_case", True))
    tokenizer = BertWordPieceTokenizer(str(vocab), lowercase=lowercase)
    path = Path(tempfile.mkdtemp(prefix="electric-import-")) / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def _verify(args: argparse.Namespace) -> int:
    """Exit 0 when every variant matches the reference energies, else 1 with a one-line reason.

    Without --checkpoint only ONNX Runtime runs (service.artifact.parity): no torch needed."""
    from service.artifact import ArtifactError

    if args.sentences and not args.checkpoint:
        raise SystemExit("--sentences needs --checkpoint: they are scored by the live model; "
                         "the stored reference energies come with their own sentences")
    folder = Path(args.artifact)
    try:
        if args.checkpoint:
            from model_export.checkpoint import load_checkpoint_model
            from model_export.verify import verify_artifact

            sentences = None
            if args.sentences:
                sentences = [s for s in Path(args.sentences).read_text().splitlines()
                             if s.strip()]
            report = verify_artifact(folder, load_checkpoint_model(Path(args.checkpoint))[0],
                                     sentences)
        else:
            from service.artifact.parity import verify_reference

            report = verify_reference(folder)
    except ArtifactError as exc:
        print(f"electric verify: FAILED: {exc}", file=sys.stderr)
        return 1
    print(report.table())
    if not report.passed:
        print(f"electric verify: {report.verdict}", file=sys.stderr)
    return 0 if report.passed else 1


def _add_artifact_flags(p: argparse.ArgumentParser, calibration_default: str) -> None:
    """What every command that writes an artifact takes: its name, variants and int8 scheme."""
    p.add_argument("--name", help="artifact name (default: the folder name)")
    p.add_argument("--variants", type=_variants, default=("fp32", "int8"))
    p.add_argument("--int8-scheme", choices=("rowwise", "dynamic"), default="dynamic",
                   help="rowwise (recommended): calibrated on --calibration text, one activation "
                        "scale per token, far closer to fp32 and the same score in any batch; "
                        "dynamic (default, needs no text): one range per batch (docs/EXPORT.md)")
    p.add_argument("--calibration", nargs="+", metavar="FILE",
                   help=f"text files (*.txt, *.txt.gz, one sentence a line) to sample the int8 "
                        f"calibration sentences from ({calibration_default})")


def register(sub: Any) -> None:
    """Add the model sub-commands to the ``electric`` parser."""
    p = sub.add_parser("train", help="train an Electric model with NCE (needs the export extra)")
    from model_export.config import TRAIN_PRESETS  # plain dataclasses, no torch

    p.add_argument("--preset", default="small",
                   help=f"training preset: {', '.join(TRAIN_PRESETS)} (docs/TRAINING.md)")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--corpora", nargs="+", help="*.txt or *.txt.gz files")
    data.add_argument("--shard", help="a shard from `electric train-shard` (NAME.npz, with "
                                      "NAME.json beside it) instead of --corpora")
    p.add_argument("--run-dir", required=True, help="checkpoints and logs; rerun to resume")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the warm start's, else the "
                                       "bundled all-MiniLM-L6-v2 WordPiece)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set steps=2000")
    p.add_argument("--export", help="after training, write an artifact folder here")
    _add_artifact_flags(p, "default: the --corpora")
    p.set_defaults(func=_train)

    p = sub.add_parser("train-shard", help="tokenize and pack the corpora as `train` would and "
                                           "write them as one file (for a GPU machine)")
    p.add_argument("--preset", default="gpu", help="the preset whose max_len, held-out and "
                                                   "speech-form fractions and corpus mix to use")
    p.add_argument("--corpora", nargs="+", required=True, help="*.txt or *.txt.gz files")
    p.add_argument("--out", required=True, help="NAME.npz; NAME.json is written beside it")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the preset's warm start's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set max_len=64")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="cap on the tokens written (0: none); large low-weight corpora are "
                        "sampled first (model_export/shard.py)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-tokens sample")
    p.add_argument("--cache", help="tokenized-corpora cache to reuse across shards "
                                   "(default: NAME.tokens.npz beside --out)")
    p.set_defaults(func=_train_shard)

    p = sub.add_parser("export", help="export a training checkpoint to an artifact folder")
    p.add_argument("checkpoint", help="final.safetensors (with config.json beside it)")
    p.add_argument("--out", required=True)
    _add_artifact_flags(p, "required by --int8-scheme rowwise")
    p.set_defaults(func=_export)

    p = sub.add_parser("import", help="turn a Hugging Face ELECTRA discriminator into an artifact")
    p.add_argument("folder", help="ElectraForPreTraining folder: config.json, model.safetensors, "
                                  "tokenizer.json")
    p.add_argument("--out", required=True)
    _add_artifact_flags(p, "required by --int8-scheme rowwise")
    p.set_defaults(func=_import)

    p = sub.add_parser("verify", help="check every variant of an artifact against the PyTorch "
                                      "energies stored in it at export (exit 1 if one fails)")
    p.add_argument("artifact")
    p.add_argument("--checkpoint", help="also compare with this training checkpoint, run live "
                                        "(needs torch)")
    p.add_argument("--sentences", help="with --checkpoint: a file of sentences, one a line, for "
                                       "the live comparison (default: the reference sentences)")
    p.set_defaults(func=_verify)

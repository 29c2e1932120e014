"""Train on a lent GPU machine: ``PYTHONPATH=. python -m model_export.device_train ...``.

What scripts/device_train.sh runs on the device after staging the upload there:

1. join the uploaded pieces (device_pieces.py) into the warm start and the shard, hashes checked;
2. probe: ``probe_steps`` joint steps of the real configuration on the real shard, to measure
   steps per second on this GPU (the first third of them, which include CUDA's start-up, are
   not counted);
3. train the ``gpu`` preset with ``steps`` sized from the probe to fill ``minutes`` (1/8 of
   them noise pre-training, the shipped recipe's 500 of 4,000), so the lr schedule ends where the
   time does, and ``max_minutes`` as the backstop;
4. split the run into ``--out`` ($OUT) for ``electric device join`` here.

It imports only torch, numpy, safetensors, tokenizers and tqdm, all on the device image
(tests/model_export/test_device_train.py runs it with the serving packages blocked).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from model_export.commands import _parse_overrides
from model_export.config import TrainConfig, preset
from model_export.device_pieces import join_pieces, split_run
from model_export.train import train

# The share of the budget the sized run's steps may fill: evaluations, checkpoints and the
# final write take the rest.
FILL = 0.85
# noise_pretrain_steps / total steps in the shipped recipe (500 of 500 + 3,500).
PRETRAIN_SHARE = 1 / 8


def probe_rate(cfg: TrainConfig, shard: Path, work: Path, probe_steps: int) -> dict[str, float]:
    """Joint steps per second of ``cfg`` on ``shard``, measured after a third of
    ``probe_steps`` of warm-up."""
    third = max(probe_steps // 3, 1)
    probe = dataclasses.replace(cfg, steps=3 * third, noise_pretrain_steps=0, eval_every=0,
                                eval_sequences=1, log_every=third, ckpt_every=3 * third,
                                max_minutes=0.0)
    run = work / "probe"
    train(probe, [], run, shard=shard)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in lines if "tokens_per_s" in r][1:]  # drop the warm-up window
    tokens_per_s = sum(r["tokens_per_s"] for r in windows) / len(windows)
    tokens_per_step = windows[-1]["tokens_seen"] / probe.total_steps
    return {"tokens_per_s": tokens_per_s, "steps_per_s": tokens_per_s / tokens_per_step,
            "tokens_per_step": tokens_per_step}


def sized(cfg: TrainConfig, steps_per_s: float, minutes: float) -> TrainConfig:
    """``cfg`` with steps that fill ``FILL`` of ``minutes`` at ``steps_per_s``."""
    total = max(int(minutes * 60 * FILL * steps_per_s), 2)
    pretrain = int(total * PRETRAIN_SHARE) if cfg.noise == "two_tower" else 0
    return dataclasses.replace(cfg, noise_pretrain_steps=pretrain, steps=total - pretrain,
                               warmup=min(cfg.warmup, max(pretrain // 4, 1)), max_minutes=minutes)


def run(upload: Path, work: Path, out: Path, minutes: float, probe_steps: int,
        overrides: dict[str, Any], preset_name: str = "gpu") -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the summary also written to out/device.json."""
    started = time.perf_counter()
    inputs = work / "in"
    join_pieces(upload, inputs)
    shard = inputs / "shard.npz"
    cfg = preset(preset_name, **{"warm_start": str(inputs / "warm"), **overrides})
    summary: dict[str, Any] = {"joined_s": round(time.perf_counter() - started, 1)}
    if probe_steps:
        summary["probe"] = probe_rate(cfg, shard, work, probe_steps)
        cfg = sized(cfg, summary["probe"]["steps_per_s"], minutes)
    else:
        cfg = dataclasses.replace(cfg, max_minutes=minutes)
    summary["train_config"] = {k: getattr(cfg, k) for k in
                               ("noise_pretrain_steps", "steps", "batch_size", "max_minutes")}
    t0 = time.perf_counter()
    train(cfg, [], work / "run", shard=shard)
    summary["train_s"] = round(time.perf_counter() - t0, 1)
    config = json.loads((work / "run" / "config.json").read_text())
    facts = config["training"]
    summary.update({k: facts.get(k) for k in ("tokens_seen", "stopped_early", "hardware")})
    summary["final"] = facts.get("final")
    summary["pieces"] = split_run(work / "run", out)["pieces"]
    summary["total_s"] = round(time.perf_counter() - started, 1)
    (out / "device.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model_export.device_train",
                                description=__doc__.splitlines()[0])
    p.add_argument("--upload", required=True, help="folder of the staged upload pieces")
    p.add_argument("--work", required=True, help="scratch folder for the joined files and runs")
    p.add_argument("--out", required=True, help="where the run's pieces go ($OUT)")
    p.add_argument("--minutes", type=float, default=8.0, help="training budget (default 8)")
    p.add_argument("--probe-steps", type=int, default=60,
                   help="joint steps that measure the speed (0: keep the preset's steps)")
    p.add_argument("--preset", default="gpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.probe_steps < 0:
        raise SystemExit(f"--minutes {args.minutes} must be > 0 and --probe-steps "
                         f"{args.probe_steps} >= 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = run(Path(args.upload), Path(args.work), out, args.minutes, args.probe_steps,
                  _parse_overrides(args.set), args.preset)
    print(json.dumps({k: summary[k] for k in ("train_config", "tokens_seen", "total_s")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The files of a training run folder that outlive the process: the resumable checkpoint's
atomic write, the metrics log, and the final weights with the config.json export reads."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from model_export.model import Electric

CHECKPOINT = "checkpoint.safetensors"
FINAL = "final.safetensors"
METRICS = "metrics.jsonl"


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def hardware() -> dict[str, Any]:
    facts: dict[str, Any] = {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                             "torch": torch.__version__, "threads": torch.get_num_threads()}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        facts["cpu"] = names[0] if names else platform.processor()
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name()
    return facts


class MetricsLog:
    """metrics.jsonl: one JSON object a line, each with the ``step`` it describes."""

    def __init__(self, path: Path, resume_step: int, world_size: int = 1, enabled: bool = True):
        # ``enabled``: False on the ranks of a data-parallel run other than 0, which log nothing.
        self.path, self.world_size, self.enabled = path, world_size, enabled
        if not enabled:
            return
        # Lines written after the checkpoint we resume from are rewritten by this run.
        lines = path.read_text().splitlines() if path.exists() else []
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        # Opened per record (a few a minute): a crash loses nothing already logged.
        with open(self.path, "a") as f:
            f.write(json.dumps({**record, "world_size": self.world_size}) + "\n")


def write_final(run_dir: Path, model: Electric, train_config: dict[str, Any],
                facts: dict[str, Any]) -> Path:
    """``final.safetensors`` (weights; config and facts in its metadata) and ``config.json``."""
    model_dict = model.cfg.to_dict()
    final = run_dir / FINAL
    atomic_save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, final,
                {"model_config": json.dumps(model_dict), "training": json.dumps(facts),
                 "tokenizer_path": "tokenizer.json"})
    config = {"model_config": model_dict, "train_config": train_config,
              "tokenizer_path": "tokenizer.json", "training": facts}
    tmp = run_dir / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    tmp.replace(run_dir / "config.json")
    return final

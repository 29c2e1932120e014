"""PNG plots for docs/PERFORMANCE.md from the benchmarks' JSON files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _load(folder: Path, name: str) -> dict[str, Any] | None:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def plot_all(results: Path, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    engine = _load(results, "engine")
    if engine:
        lengths = sorted({c["length"] for c in engine["cells"]})
        fig, axes = plt.subplots(1, len(lengths), figsize=(3.2 * len(lengths), 3.2), sharey=True)
        for ax, length in zip(axes, lengths, strict=True):
            for runtime in dict.fromkeys(c["runtime"] for c in engine["cells"]):
                cells = sorted((c for c in engine["cells"]
                                if c["runtime"] == runtime and c["length"] == length),
                               key=lambda c: c["batch"])
                ax.plot([c["batch"] for c in cells], [c["tokens_per_s"] for c in cells],
                        marker="o", label=runtime)
            ax.set_xscale("log", base=2)
            ax.set_title(f"length {length}")
            ax.set_xlabel("batch size")
        axes[0].set_ylabel("tokens/s")
        axes[-1].legend(fontsize=7)
        fig.suptitle(f"Engine, {engine['preset']}, {engine['threads']} threads")
        fig.tight_layout()
        written.append(out / "engine.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    service = _load(results, "service")
    if service:
        fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
        per_request = service["points"][0]["per_request"]
        rows = [r for r in service["points"] if r["per_request"] == per_request]
        clients = [r["connections"] for r in rows]
        left.plot(clients, [r["tokens_per_s"] for r in rows], marker="o", label="service")
        if service["engine"] is not None:
            left.axhline(service["engine"]["tokens_per_s"], color="gray", linestyle="--",
                         label=f"bare engine, batch {service['engine']['reference_batch']}")
        for r in service.get("no_batching", []):
            left.plot([r["connections"]], [r["tokens_per_s"]], marker="x", color="red",
                      linestyle="", label="batching off")
        left.set_xscale("log", base=2)
        left.set_xlabel("connections")
        left.set_ylabel("tokens/s")
        left.legend(fontsize=7)
        for q in ("p50", "p95", "p99"):
            right.plot(clients, [r[q] for r in rows], marker="o", label=q)
        right.set_xscale("log", base=2)
        right.set_yscale("log")
        right.set_xlabel("connections")
        right.set_ylabel("latency ms")
        right.legend(fontsize=7)
        fig.suptitle(f"Service, {service['variant']}, {per_request} "
                     "sentence(s) per request")
        fig.tight_layout()
        written.append(out / "service.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    memory = [(label, _load(results, f"memory-{label}")) for label in ("before", "after")]
    if all(data for _, data in memory):
        names = list(memory[0][1]["rss_mib"])  # type: ignore[index]
        fig, axes = plt.subplots(1, len(names), figsize=(2.6 * len(names), 3.0), sharey=True)
        for ax, name in zip(axes, names, strict=True):
            for label, data in memory:
                curve = data["rss_mib"].get(name, [])  # type: ignore[index]
                step = data["interval_s"]  # type: ignore[index]
                ax.plot([i * step for i in range(len(curve))], curve, label=label)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("s")
        axes[0].set_ylabel("server RSS, MiB")
        axes[-1].legend(fontsize=7)
        fig.suptitle("Server RSS during bench/memory_load.py, before and after the request bounds")
        fig.tight_layout()
        written.append(out / "rss.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written

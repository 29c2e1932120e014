"""Start-up time to ready and resident memory of ``electric serve`` with a given artifact."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.launch import Server, proc_status
from bench.machine import describe
from bench.python_load import closed_loop
from bench.service_load import load_sentences


def run(artifact: Path, variant: str = "auto", threads: int = 0,
        repeats: int = 3) -> dict[str, Any]:
    """Time from process start to /readyz 200 (imports, sha256, session, warm-up), and the
    resident set when ready and after scoring 512 sentences from 16 clients."""
    settings = {"artifact": artifact.resolve(), "variant": variant, "intra_op_threads": threads}
    runs = []
    sentences = load_sentences(512, 20)
    for _ in range(repeats):
        with Server(settings) as server:
            ready_rss = proc_status(server.pid, "VmRSS")
            asyncio.run(closed_loop(server.port, [[s] for s in sentences], 16))
            runs.append({"ready_s": server.ready_s, "rss_ready_mib": ready_rss / 1024,
                         "rss_after_load_mib": proc_status(server.pid, "VmRSS") / 1024,
                         "peak_rss_mib": proc_status(server.pid, "VmHWM") / 1024})
    size = sum(p.stat().st_size for p in artifact.glob("*.onnx")) / 2**20
    return {"bench": "startup", "artifact": str(artifact), "variant": variant,
            "onnx_mib": size, "machine": describe(), "runs": runs}


def report(result: dict[str, Any]) -> str:
    lines = [(f"Start-up of `electric serve` on `{result['artifact']}` (variant "
             f"{result['variant']}; ONNX files {result['onnx_mib']:.0f} MiB), "
             f"{result['machine']['cpu']}."), "",
             "| run | ready after s | RSS at ready MiB | RSS after load MiB | peak RSS MiB |",
             "|---|---|---|---|---|"]
    for i, r in enumerate(result["runs"], 1):
        lines.append(f"| {i} | {r['ready_s']:.2f} | {r['rss_ready_mib']:.0f} | "
                     f"{r['rss_after_load_mib']:.0f} | {r['peak_rss_mib']:.0f} |")
    return "\n".join(lines)

"""``electric bench``: one command per benchmark; Markdown to stdout, JSON for the plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_ARTIFACT = Path("models/electric-minilm")


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def _emit(result: dict[str, Any], table: str, out: Path | None) -> None:
    print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {out}")


def _engine(args: argparse.Namespace) -> int:
    from bench import engine

    result = engine.run(args.preset, args.batches, args.lengths, args.threads,
                        min_time=args.min_time)
    _emit(result, engine.report(result), args.json)
    return 0


def _pll(args: argparse.Namespace) -> int:
    from bench import pll

    result = pll.run(args.preset, args.words, args.threads, min_time=args.min_time)
    _emit(result, pll.report(result), args.json)
    return 0


def _service(args: argparse.Namespace) -> int:
    from bench import service_load

    result = service_load.run(args.artifact, args.variant, args.threads, args.sentences,
                              args.words, args.per_request, args.connections,
                              duration_s=args.duration, warmup_s=args.warmup,
                              engine_batches=args.engine_batches, null_engine=args.null_engine,
                              client=args.client, batching_off=not args.skip_no_batching,
                              parallel=args.parallel, open_arrivals=args.open_arrivals)
    _emit(result, service_load.report(result), args.json)
    return 0


def _startup(args: argparse.Namespace) -> int:
    from bench import startup

    result = startup.run(args.artifact, args.variant, args.threads, args.repeats)
    _emit(result, startup.report(result), args.json)
    return 0


def _gpu(args: argparse.Namespace) -> int:
    from bench import gpu

    if not (args.models / "minilm.fp16.onnx").is_file():
        gpu.prepare(args.models)
    result = gpu.run(args.models, args.batches, args.length, allow_cpu=args.allow_cpu)
    _emit(result, gpu.report(result), args.json)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from bench import plots

    for path in plots.plot_all(args.results, args.out):
        print(f"wrote {path}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("bench", help="benchmarks: engine, pll, service, startup, gpu, plot")
    kinds = p.add_subparsers(dest="bench", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--threads", type=int, default=0, help="ORT/torch threads (0 = all cores)")
        q.add_argument("--json", type=Path, help="also write the figures to this JSON file")

    q = kinds.add_parser("engine", help="PyTorch eager vs ORT raw / fused fp32 / int8")
    q.add_argument("--preset", default="minilm", help="model shape: tiny, minilm, base")
    q.add_argument("--batches", type=_ints, default=(1, 8, 32, 64))
    q.add_argument("--lengths", type=_ints, default=(16, 32, 64, 128))
    q.add_argument("--min-time", type=float, default=0.5, help="seconds of timing per cell")
    common(q)
    q.set_defaults(func=_engine)

    q = kinds.add_parser("pll", help="one-pass Electric vs masked-LM PLL, same backbone")
    q.add_argument("--preset", default="minilm")
    q.add_argument("--words", type=int, default=20, help="tokens per sentence")
    q.add_argument("--min-time", type=float, default=1.0)
    common(q)
    q.set_defaults(func=_pll)

    for name, helptext in (("service", "HTTP service under load vs the bare engine"),
                           ("startup", "time to ready and resident memory")):
        q = kinds.add_parser(name, help=helptext)
        q.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
        q.add_argument("--variant", default="auto")
        common(q)
        if name == "service":
            q.add_argument("--sentences", type=int, default=1024)
            q.add_argument("--words", type=int, default=20, help="mean words per sentence")
            q.add_argument("--per-request", type=_ints, default=(1, 8),
                           help="sentences per request, one sweep each (default 1,8)")
            q.add_argument("--connections", type=_ints, default=(1, 16, 64, 256),
                           help="keep-alive connections of the closed loop (default 1,16,64,256)")
            q.add_argument("--duration", type=float, default=10.0,
                           help="seconds of load per point (wrk: whole seconds)")
            q.add_argument("--warmup", type=float, default=2.0,
                           help="seconds of load before each point, not counted")
            q.add_argument("--engine-batches", type=_ints, default=(8, 16, 32, 64),
                           help="batch sizes of the bare engine (32, the reference, always)")
            q.add_argument("--null-engine", action="store_true",
                           help="replace the ONNX call by a no-op: what the stack alone costs")
            q.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                           help="load generator (auto: wrk when installed)")
            q.add_argument("--parallel", type=int, default=0,
                           help="batches the service runs at once (ELECTRIC_PARALLEL_BATCHES; "
                                "0: its own choice)")
            q.add_argument("--open-arrivals", type=int, default=3000,
                           help="arrivals the half-load open loop runs for, at most 120 s "
                                "(default 3000; 0: --duration alone)")
            q.add_argument("--skip-no-batching", action="store_true",
                           help="leave out the point with batching off (max_batch_size 1)")
            q.set_defaults(func=_service)
        else:
            q.add_argument("--repeats", type=int, default=3)
            q.set_defaults(func=_startup)

    q = kinds.add_parser("gpu", help="fp16 fused graph on CUDA: run / IO binding / CUDA graph")
    q.add_argument("--models", type=Path, default=Path("bench/gpu-models"),
                   help="random fp16 models (exported here first when missing; needs torch)")
    q.add_argument("--batches", type=_ints, default=(32, 128, 256))
    q.add_argument("--length", type=int, default=128)
    q.add_argument("--allow-cpu", action="store_true", help="dry run on the CPU provider")
    q.add_argument("--json", type=Path)
    q.set_defaults(func=_gpu)

    q = kinds.add_parser("plot", help="PNG plots from the JSON files of the other benchmarks")
    q.add_argument("results", type=Path, help="folder of engine.json, pll.json, service.json")
    q.add_argument("--out", type=Path, default=Path("docs/img"))
    q.set_defaults(func=_plot)

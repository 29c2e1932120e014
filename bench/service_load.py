"""Service end to end vs the bare engine, on the same sentences (targets: docs/PERFORMANCE.md).

1. engine: the artifact's ONNX file in this process, loaded as the service loads it (same
   variant, same session options and intra-op threads: service/engine.py ``OnnxEngine.load``),
   on the sentences sorted by length and cut into batches of 8, 16, 32, 64 -> tokens/s of
   each; batch 32 is the reference the targets name, the best of them is reported beside it.
2. closed loop: the real service on loopback (``electric serve``), N keep-alive connections
   (swept, 1 to 256) each sending its next request when the last is answered, 1 or 8
   sentences per request -> requests/s, tokens/s, ratio to the engine, p50/p99, non-200
   answers, mean batch size and padding (from the service's /metrics), server CPU per request.
   Each point is one run of the client: a warm-up, a counted window, a tail (``Bench``).
3. open loop at half the peak rate (Poisson arrivals) -> p50/p99 (target: p99 <= 3 x p50),
   run long enough for ``open_arrivals`` arrivals (up to ``OPEN_LOOP_MAX_S``), so that the p99
   rests on dozens of answers, not the handful that ten seconds of 8-sentence requests give.

Tokens are scored tokens ([CLS]/[SEP] excluded) on both sides, counted by the artifact's
tokenizer: 200 answers in the window x the mean tokens of the bodies (sent round-robin, so each
as often). The service's own counter (electric_tokens_scored_total) is kept beside it as a
check.

Load comes from wrk (bench/wrk.py), one thread, so the client takes little of the cores the
server and the engine are measured on; without wrk, from the Python client in this process
(bench/python_load.py), which shares them, and the report says so.

``null_engine``: the same service with the ONNX call replaced by a no-op (bench/null_server.py):
what the stack alone sustains, in requests/s and server CPU microseconds per request.
"""

from __future__ import annotations

import gc
import json
import math
import os
import random
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import python_load, wrk
from bench.launch import NULL_SERVE, SERVE, Server, cpu_seconds
from bench.machine import describe, recorded_path
from bench.timing import best_seconds
from model_export.corpus import read_lines

CORPUS = Path(os.environ.get("ELECTRIC_BENCH_CORPUS",
                             Path(__file__).resolve().parents[2] / "shared/corpora/brown.txt.gz"))
REFERENCE_BATCH = 32
"""The engine batch size the service's throughput target is a share of (its best batches on
a CPU: length-sorted, 32 rows)."""
# Common English words for synthetic sentences where the corpus is absent.
FILLER = (
    "the", "of", "and", "to", "a", "in", "that", "is", "was", "he", "for", "it", "with", "as",
    "his", "on", "be", "at", "by", "had", "not", "are", "but", "from", "or", "have", "an",
    "they", "which", "one", "you", "were", "her", "all", "she", "there", "would", "their",
    "we", "him", "been", "has", "when", "who", "will", "more", "no", "if", "out", "so", "said",
    "what", "up", "its", "about", "into", "than", "them", "can", "only", "other", "new",
    "some", "could", "time", "these", "two", "may", "then", "do", "first", "any", "my", "now",
    "such", "like", "our", "over", "man", "me", "even", "most", "made", "after", "also", "did",
    "many", "before", "must", "through", "back", "years", "where", "much", "your", "way",
    "well", "down", "should", "because", "each", "just", "those", "people", "how", "too",
    "little", "state", "good", "very", "make", "world", "still", "own", "see", "men", "work",
    "long", "get", "here", "between", "both", "life", "being", "under",
)


def load_sentences(n: int, words: int, seed: int = 0) -> list[str]:
    """``n`` sentences of about ``words`` words: from the Brown corpus when present."""
    rng = random.Random(seed)
    if CORPUS.is_file():
        lines = [ln.strip() for ln in read_lines([CORPUS])
                 if words // 2 <= len(ln.split()) <= words * 2]
        if len(lines) >= n:
            return rng.sample(lines, n)
    return [" ".join(rng.choice(FILLER) for _ in range(max(1, int(rng.gauss(words, words / 3)))))
            for _ in range(n)]


def scored_tokens(artifact: Path, sentences: list[str]) -> list[int]:
    """Scored tokens of each sentence, by the artifact's tokenizer as the service runs it."""
    from service.artifact import load_manifest
    from service.tokenization import SentenceTokenizer

    manifest = load_manifest(artifact)
    tokenizer = SentenceTokenizer.from_file(artifact / manifest.tokenizer.file,
                                            manifest.architecture.max_positions)
    return [e.num_tokens for e in tokenizer.encode(sentences, truncate=True)]


def bench_engine(artifact: Path, variant: str, threads: int, parallel: int,
                 sentences: list[str], batch_sizes: tuple[int, ...],
                 repeats: int = 3) -> dict[str, Any]:
    """The bare engine on length-sorted batches of each size, timed at ``engine.run`` alone,
    two ways: as the service runs it (``parallel`` batches at once, ``threads`` each:
    service/engine.py ``cpu_runs``; worker threads take the batches in turn), and one batch at a
    time on all the cores, as the CLI's scorer runs it. The first at batch 32 is the reference;
    the best of both, at any size, is reported beside it."""
    from service.artifact import load_manifest
    from service.engine import OnnxEngine, cpu_budget
    from service.local import InProcessScorer

    cores = cpu_budget() or os.cpu_count() or 1
    scorer = InProcessScorer(artifact, variant, cores)  # type: ignore[arg-type]
    served = OnnxEngine.load(artifact, load_manifest(artifact), variant,  # type: ignore[arg-type]
                             threads, parallel)
    served_threads = served.intra_op_threads
    encoded = scorer.tokenizer.encode(sentences, truncate=True)
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].length)
    tokens = sum(e.num_tokens for e in encoded)
    real = sum(e.length for e in encoded)
    configs: dict[str, dict[str, Any]] = {
        "service": {"engine": served, "runs": served.parallel_runs, "threads": served_threads},
        "one_at_a_time": {"engine": scorer.engine, "runs": 1, "threads": cores},
    }
    for config in configs.values():
        engine, runs = config.pop("engine"), config["runs"]
        by_batch: dict[str, dict[str, float]] = {}
        with ThreadPoolExecutor(max_workers=runs) as pool:
            for size in sorted(set(batch_sizes) | {REFERENCE_BATCH}):
                padded = [scorer.padded(encoded, order[i:i + size])
                          for i in range(0, len(order), size)]

                def one_pass(padded: list[Any] = padded, engine: Any = engine) -> None:
                    list(pool.map(lambda batch: engine.run(*batch), padded))

                seconds = best_seconds(one_pass, min_time=0, min_runs=repeats, max_runs=repeats)
                positions = sum(ids.size for ids, _ in padded)
                by_batch[str(size)] = {"tokens_per_s": tokens / seconds, "seconds": seconds,
                                       "batches": len(padded), "padding": 1 - real / positions}
        config["by_batch"] = by_batch
    reference = configs["service"]["by_batch"][str(REFERENCE_BATCH)]["tokens_per_s"]
    name, size = max(((n, b) for n, c in configs.items() for b in c["by_batch"]),
                     key=lambda nb: configs[nb[0]]["by_batch"][nb[1]]["tokens_per_s"])
    return {"tokens": tokens, "variant": served.variant, "providers": served.providers,
            "parallel_runs": served.parallel_runs, "intra_op_threads": served_threads,
            "by_batch": configs["service"]["by_batch"], "configs": configs,
            "reference_batch": REFERENCE_BATCH, "tokens_per_s": reference,
            "best_config": name, "best_batch": int(size),
            "best_tokens_per_s": configs[name]["by_batch"][size]["tokens_per_s"]}


SCORE_200 = 'electric_requests_total{endpoint="/v1/score",status="200"}'
TAIL_S = 1.0
OPEN_ARRIVALS = 3000
"""Arrivals an open-loop point asks for by default: its p99 then rests on about 30 answers."""
OPEN_LOOP_MAX_S = 120.0
"""Load kept on after a point's window, so the window ends in steady state, not at the stop."""


def _moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = max(1.0, d.get("electric_batch_size_count", 0.0))
    padded = max(1.0, d.get('electric_batch_tokens_sum{kind="padded"}', 0.0))
    return {"mean_batch": d.get("electric_batch_size_sum", 0.0) / batches,
            "padding": 1 - d.get('electric_batch_tokens_sum{kind="real"}', 0.0) / padded,
            "metrics_tokens": d.get("electric_tokens_scored_total", 0.0),
            "metrics_requests": d.get(SCORE_200, 0.0)}


class Bench:
    """One server under load, one point at a time: each a single run of the client, its first
    ``warmup_s`` not counted, then a window of ``duration_s`` in which the client counts its
    200 answers and the server's metrics and CPU time are read at both ends, then ``TAIL_S``
    more. Counting in a window keeps the start (every connection sends at once, none has an
    answer yet) and the stop (answers in flight are lost) out of the throughput."""

    def __init__(self, server: Server, client: str, warmup_s: float, duration_s: float):
        self.server, self.client = server, client
        self.warmup_s, self.duration_s = warmup_s, duration_s
        self.url = f"{server.url}/v1/score"

    def _load(self, bodies: Path, connections: int, seconds: float,
              window: tuple[float, float], rate: float | None) -> wrk.Load:
        if self.client == "wrk":
            return wrk.run(self.url, bodies, connections, seconds, window, rate)
        payloads = [json.loads(line) for line in bodies.read_text().splitlines()]
        if rate is None:
            return python_load.closed(self.server.port, payloads, connections, seconds, window)
        return python_load.open_loop(self.server.port, payloads, rate, seconds, window)

    def point(self, bodies: Path, tokens_per_request: float, connections: int,
              rate: float | None = None, duration_s: float | None = None) -> dict[str, Any]:
        window = (self.warmup_s, self.warmup_s + (duration_s or self.duration_s))
        seconds = math.ceil(window[1] + TAIL_S)  # wrk runs whole seconds
        with ThreadPoolExecutor(1) as pool:
            start = time.perf_counter()
            running = pool.submit(self._load, bodies, connections, seconds, window, rate)
            time.sleep(max(0.0, start + window[0] - time.perf_counter()))
            before = self.server.metrics()
            cpu0, t0 = cpu_seconds(self.server.pid), time.perf_counter()
            time.sleep(max(0.0, start + window[1] - time.perf_counter()))
            t1, cpu1 = time.perf_counter(), cpu_seconds(self.server.pid)
            moved = _moved(before, self.server.metrics())
            load = running.result()
        served = moved.pop("metrics_requests")
        return {"connections": load.connections, "requests": load.requests,
                "seconds": load.seconds, "window_s": load.window_s,
                "requests_per_s": load.requests_per_s,
                "tokens_per_s": load.requests_per_s * tokens_per_request,
                "metrics_requests_per_s": served / (t1 - t0),
                "metrics_tokens_per_s": moved.pop("metrics_tokens") / (t1 - t0),
                "p50": load.p50_ms, "p95": load.p95_ms, "p99": load.p99_ms, **load.extra,
                "non_200": sum(load.non_200.values()),
                "non_200_by_status": {str(k): v for k, v in load.non_200.items()},
                "socket_errors": load.errors, "late": load.late, **moved,
                "server_cpu_s": cpu1 - cpu0,
                "server_cpu_us_per_request": 1e6 * (cpu1 - cpu0) / served if served
                else float("nan"),
                "client_cpu_s": load.client_cpu_s,
                "client_cpu_us_per_request": 1e6 * load.client_cpu_s / max(1, load.requests)}


def write_bodies(folder: Path, sentences: list[str], tokens: list[int],
                 per_request: int) -> tuple[Path, float]:
    """The /v1/score bodies of ``per_request`` sentences each, one JSON per line, and their
    mean scored tokens per body."""
    path = folder / f"bodies-{per_request}.jsonl"
    lines, counts = [], []
    for i in range(0, len(sentences), per_request):
        lines.append(json.dumps({"sentences": sentences[i:i + per_request], "truncate": True}))
        counts.append(sum(tokens[i:i + per_request]))
    path.write_text("\n".join(lines) + "\n")
    return path, sum(counts) / len(counts)


def open_loop_connections(rate: float) -> int:
    """Connections for an open loop at ``rate``: about a second of arrivals, so that none
    waits for a free connection unless answers take about a second, and each connection is
    used every second or so, well inside the service's keep-alive (header) timeout."""
    return min(256, max(8, math.ceil(rate)))


def open_loop_seconds(rate: float, duration_s: float, arrivals: int) -> float:
    """Counted seconds of an open loop at ``rate`` requests/s: ``duration_s``, or longer where
    that holds fewer than ``arrivals`` arrivals (the p99 of N answers is decided by N/100 of
    them), at most ``OPEN_LOOP_MAX_S``; whole seconds, as wrk counts."""
    wanted = arrivals / rate if rate > 0 else 0.0
    return float(math.ceil(max(duration_s, min(OPEN_LOOP_MAX_S, wanted))))


def _with_ratios(row: dict[str, Any], engine: dict[str, Any] | None) -> dict[str, Any]:
    if engine is not None:
        row["ratio_to_engine"] = row["tokens_per_s"] / engine["tokens_per_s"]
        row["ratio_to_best_batch"] = row["tokens_per_s"] / engine["best_tokens_per_s"]
    return row


def run(artifact: Path, variant: str = "auto", threads: int = 0, n_sentences: int = 1024,
        words: int = 20, per_request: tuple[int, ...] = (1, 8),
        connections: tuple[int, ...] = (1, 16, 64, 256), duration_s: float = 10.0,
        warmup_s: float = 2.0, engine_batches: tuple[int, ...] = (8, 16, 32, 64),
        null_engine: bool = False, client: str = "auto",
        batching_off: bool = True, parallel: int = 0,
        open_arrivals: int = OPEN_ARRIVALS) -> dict[str, Any]:
    if client == "auto":
        client = "wrk" if wrk.available() else "python"
    if client == "wrk" and not wrk.available():
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    sentences = load_sentences(n_sentences, words)
    tokens = scored_tokens(artifact, sentences)
    engine = None if null_engine else bench_engine(artifact, variant, threads, parallel, sentences,
                                                   engine_batches)
    gc.collect()  # the engine's session, its threads and memory, go before the server starts
    assert engine is None or engine["tokens"] == sum(tokens), "both sides count the same tokens"
    settings = {"artifact": artifact.resolve(), "variant": variant, "intra_op_threads": threads,
                "parallel_batches": parallel,
                "request_timeout_s": 120, "max_queue": 100_000}
    command = NULL_SERVE if null_engine else SERVE
    points, half, no_batching = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        bodies = {k: write_bodies(Path(tmp), sentences, tokens, k) for k in per_request}
        with Server(settings, command=command) as server:
            bench = Bench(server, client, warmup_s, duration_s)
            for k in per_request:
                path, mean_tokens = bodies[k]
                rows = [{"per_request": k, "tokens_per_request": mean_tokens,
                         **_with_ratios(bench.point(path, mean_tokens, c), engine)}
                        for c in connections]
                points += rows
                rate = max(r["requests_per_s"] for r in rows) / 2
                open_row = bench.point(path, mean_tokens, open_loop_connections(rate), rate,
                                       open_loop_seconds(rate, duration_s, open_arrivals))
                half.append({"per_request": k, "rate": rate, **open_row,
                             "p99_over_p50": open_row["p99"] / open_row["p50"]})
        if batching_off:
            at = max((c for c in connections if c <= 64), default=connections[0])
            path, mean_tokens = bodies[per_request[0]]
            with Server({**settings, "max_batch_size": 1}, command=command) as server:
                bench = Bench(server, client, warmup_s, duration_s)
                no_batching.append({"per_request": per_request[0],
                                    "tokens_per_request": mean_tokens,
                                    **_with_ratios(bench.point(path, mean_tokens, at), engine)})
    return {
        "bench": "service", "artifact": recorded_path(artifact),
        "variant": "null" if engine is None else engine["variant"],
        "null_engine": null_engine, "threads": threads, "sentences": n_sentences,
        "words": words, "tokens": sum(tokens),
        "corpus": recorded_path(CORPUS) if CORPUS.is_file() else "synthetic",
        "client": client, "duration_s": duration_s, "warmup_s": warmup_s,
        "open_arrivals": open_arrivals,
        "machine": describe(), "engine": engine, "points": points, "half_load": half,
        "no_batching": no_batching}


def _ratio(row: dict[str, Any], key: str) -> str:
    return f"{100 * row[key]:.0f}%" if key in row else "—"


def _row(row: dict[str, Any], label: str = "") -> str:
    return (f"| {row['per_request']}{label} | {row['connections']} | "
            f"{row['requests_per_s']:,.0f} | {row['tokens_per_s']:,.0f} | "
            f"{_ratio(row, 'ratio_to_engine')} | {_ratio(row, 'ratio_to_best_batch')} | "
            f"{row['p50']:.1f} | {row['p99']:.1f} | {row['non_200'] + row['socket_errors']} | "
            f"{row['mean_batch']:.1f} | {row['server_cpu_us_per_request']:,.0f} |")


def report(result: dict[str, Any]) -> str:
    m, e = result["machine"], result["engine"]
    what = ("The service with a no-op engine (the stack alone)" if result["null_engine"]
            else f"Service vs bare engine, variant {result['variant']}")
    lines = [(f"{what}: `{result['artifact']}`, {result['sentences']} sentences of "
              f"~{result['words']} words ({result['corpus']}, {result['tokens']:,} scored "
              f"tokens); each point one run of the client, counted over {result['duration_s']:g} s "
              f"after {result['warmup_s']:g} s of warm-up (p50/p99 over the whole run); {m['cpu']} ({', '.join(m['cpu_flags']) or 'no listed flags'}), "
              f"{m['cores']} cores, load average {m['load_average_1m']} at the end.")]
    if result["client"] == "wrk":
        lines.append("Load from wrk (one thread).")
    else:
        lines.append("**Load from the Python client in the benchmark's process: it shares the "
                     "server's cores, so these figures understate the service (install wrk).**")
    if e is not None:
        lines.append("")
        for name, c in e["configs"].items():
            sizes = ", ".join(f"{b}: {v['tokens_per_s']:,.0f}" for b, v in c["by_batch"].items())
            how = ("as the service runs it" if name == "service"
                   else "one batch at a time on all the cores")
            lines.append(f"Bare engine, {how} ({c['runs']} batch(es) at once x {c['threads']} "
                         f"intra-op thread(s)), length-sorted batches, tokens/s: {sizes}.")
        lines.append(f"Reference (as served, batch {e['reference_batch']}): "
                     f"{e['tokens_per_s']:,.0f}; best: {e['best_tokens_per_s']:,.0f} "
                     f"({e['best_config'].replace('_', ' ')}, batch {e['best_batch']}).")
    lines += ["", ("| sentences/request | connections | req/s | tokens/s | vs engine b32 "
                   "| vs best batch | p50 ms | p99 ms | non-200 | mean batch "
                   "| server CPU µs/req |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(r) for r in result["points"]]
    lines += [_row(r, " (batching off)") for r in result["no_batching"]]
    lines.append("")
    for h in result["half_load"]:
        lines.append(
            f"Open loop at half the peak, {h['per_request']} sentence(s) per request: "
            f"{h['rate']:,.0f} req/s asked, {h['requests_per_s']:,.0f} answered on "
            f"{h['connections']} connections; p50 {h['p50']:.1f} ms, p99 {h['p99']:.1f} ms, "
            f"p99/p50 {h['p99_over_p50']:.2f} (target <= 3) over {h['requests']:,} answers "
            f"in {h['seconds']:.0f} s; non-200 "
            f"{h['non_200'] + h['socket_errors']}; late arrivals {h['late']}.")
    rows = result["points"] + result["no_batching"] + result["half_load"]
    client = max(r["client_cpu_s"] / r["seconds"] for r in rows)
    drift = max(abs(r["metrics_tokens_per_s"] / r["tokens_per_s"] - 1) for r in rows
                if r["tokens_per_s"])
    lines += ["", (f"The client used at most {100 * client:.0f}% of one core. The service's "
                   f"own count of scored tokens (electric_tokens_scored_total, read at the "
                   f"window's ends) agrees with the client's within {100 * drift:.1f}%.")]
    if result["null_engine"]:
        one = [r for r in result["points"] if r["per_request"] == 1]
        if one:
            best = max(one, key=lambda r: r["requests_per_s"])
            lines.append(f"Stack alone, one sentence per request: {best['requests_per_s']:,.0f} "
                         f"req/s at {best['connections']} connections, "
                         f"{best['server_cpu_us_per_request']:,.0f} µs of server CPU per "
                         "request (target: >= 4,000 req/s on 2 cores, <= 250 µs).")
    return "\n".join(lines)

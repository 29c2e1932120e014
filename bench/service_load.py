"""Service end to end vs the bare engine, on the same sentences (DESIGN.md performance targets).

1. engine: tokenize everything up front, form batches with the service's own policy and limits,
   time ``engine.run`` alone -> tokens/s, the baseline.
2. closed loop: the real service on loopback, N concurrent clients (N swept, 1 to 256) each
   sending its next request when the last is answered -> tokens/s, p50/p95/p99, mean batch
   size and padding share (from the service's own metrics), ratio to the engine.
3. open loop at half load: Poisson arrivals at half the 64-client request rate -> p50/p95/p99
   (target: p99 <= 3 x p50).
4. the same closed loop with batching off (``max_batch_size`` 1), to show what batching buys.

Tokens are scored tokens ([CLS]/[SEP] excluded), the same count on both sides. The load
generator shares the machine with the server; its CPU time is recorded so the figures can be
read for what they are.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

from bench.launch import RawClient, Server, cpu_seconds, score
from bench.machine import describe
from bench.timing import percentiles
from model_export.corpus import read_lines

CORPUS = Path(os.environ.get("ELECTRIC_BENCH_CORPUS",
                             Path(__file__).resolve().parents[2] / "shared/corpora/brown.txt.gz"))
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


def bench_engine(artifact: Path, variant: str, threads: int, sentences: list[str],
                 repeats: int = 2) -> dict[str, Any]:
    """The bare engine on the batches the service's policy forms with everything queued:
    the CLI's in-process scorer, with the service's settings, timed at ``engine.run`` alone."""
    from service.batch_policy import resolve_limits
    from service.engine import CUDA
    from service.local import InProcessScorer
    from service.settings import Settings

    settings = Settings()
    scorer = InProcessScorer(artifact, variant, threads)  # type: ignore[arg-type]
    engine = scorer.engine
    encoded = scorer.tokenizer.encode(sentences, truncate=True)
    limits = resolve_limits(engine.providers[0] == CUDA, settings.max_batch_tokens,
                            settings.max_batch_size, settings.sort_window, settings.max_padding)
    padded = [scorer.padded(encoded, batch) for batch in scorer.batches(encoded, limits)]
    for ids, mask in padded[:3]:
        engine.run(ids, mask)
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        start, cpu0 = time.perf_counter(), time.process_time()
        for ids, mask in padded:
            engine.run(ids, mask)
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - cpu0)
    tokens = sum(e.num_tokens for e in encoded)
    return {"tokens": tokens, "seconds": best, "tokens_per_s": tokens / best,
            "tokens_per_cpu_s": tokens / cpu, "batches": len(padded), "variant": engine.variant}


async def closed_loop(port: int, requests: list[list[str]],
                      concurrency: int) -> tuple[float, int, list[float]]:
    latencies: list[float] = []
    tokens = 0
    todo = iter(requests)
    clients = [RawClient(port) for _ in range(concurrency)]

    async def worker(client: RawClient) -> None:
        nonlocal tokens
        for batch in todo:
            t0 = time.perf_counter()
            scored = await score(client, batch)  # not `tokens += await ...`: that loses updates
            tokens += scored
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    seconds = time.perf_counter() - start
    for c in clients:
        await c.aclose()
    return seconds, tokens, latencies


async def open_loop(port: int, requests: list[list[str]], rate: float,
                    seed: int = 0) -> list[float]:
    """Poisson arrivals at ``rate`` requests/s, independent of how fast answers come."""
    rng = random.Random(seed)
    latencies: list[float] = []
    idle: list[RawClient] = []

    async def one(batch: list[str]) -> None:
        client = idle.pop() if idle else RawClient(port)
        t0 = time.perf_counter()
        await score(client, batch)
        latencies.append(time.perf_counter() - t0)
        idle.append(client)

    tasks = []
    next_at = time.perf_counter()
    for batch in requests:
        next_at += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(batch)))
    await asyncio.gather(*tasks)
    for c in idle:
        await c.aclose()
    return latencies


def _moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = max(1.0, d.get("electric_batch_size_count", 0.0))
    padded = max(1.0, d.get('electric_batch_tokens_sum{kind="padded"}', 0.0))
    return {"mean_batch": d.get("electric_batch_size_sum", 0.0) / batches,
            "padding": 1 - d.get('electric_batch_tokens_sum{kind="real"}', 0.0) / padded,
            "mean_inference_ms": 1000 * d.get("electric_inference_duration_seconds_sum", 0.0)
            / batches}


def _sweep(server: Server, requests: list[list[str]], concurrencies: tuple[int, ...],
           engine_tps: float) -> list[dict[str, Any]]:
    rows = []
    for concurrency in concurrencies:
        asyncio.run(closed_loop(server.port, requests[: concurrency * 2], concurrency))  # warm
        before, cpu0 = server.metrics(), cpu_seconds(server.pid)
        client_cpu0 = time.process_time()
        seconds, tokens, latencies = asyncio.run(closed_loop(server.port, requests, concurrency))
        server_cpu = cpu_seconds(server.pid) - cpu0
        rows.append({"concurrency": concurrency, "tokens_per_s": tokens / seconds,
                     "ratio_to_engine": tokens / seconds / engine_tps,
                     "requests_per_s": len(requests) / seconds, **percentiles(latencies),
                     **_moved(before, server.metrics()), "server_cpu_s": server_cpu,
                     "client_cpu_s": time.process_time() - client_cpu0})
    return rows


def run(artifact: Path, variant: str = "auto", threads: int = 0, n_sentences: int = 1024,
        words: int = 20, per_request: int = 1,
        concurrencies: tuple[int, ...] = (1, 4, 16, 64, 256),
        batching_off: bool = True) -> dict[str, Any]:
    sentences = load_sentences(n_sentences, words)
    requests = [sentences[i:i + per_request] for i in range(0, len(sentences), per_request)]
    engine = bench_engine(artifact, variant, threads, sentences)
    settings = {"artifact": artifact.resolve(), "variant": variant, "intra_op_threads": threads,
                "request_timeout_s": 120, "max_queue": 100_000}
    with Server(settings) as server:
        sweep = _sweep(server, requests, concurrencies, engine["tokens_per_s"])
        at64 = next((r for r in sweep if r["concurrency"] == 64), sweep[-1])
        half = asyncio.run(open_loop(server.port, requests, at64["requests_per_s"] / 2))
    result: dict[str, Any] = {
        "bench": "service", "artifact": str(artifact), "variant": engine["variant"],
        "threads": threads, "sentences": n_sentences, "words": words,
        "sentences_per_request": per_request, "corpus": str(CORPUS) if CORPUS.is_file()
        else "synthetic", "machine": describe(), "engine": engine, "batching": sweep,
        "half_load": {"rate": at64["requests_per_s"] / 2, **percentiles(half)}}
    if batching_off:
        with Server({**settings, "max_batch_size": 1}) as server:
            result["no_batching"] = _sweep(server, requests, (64,), engine["tokens_per_s"])
    return result


def report(result: dict[str, Any]) -> str:
    e = result["engine"]
    lines = [(f"Service vs bare engine: `{result['artifact']}` {result['variant']}, "
             f"{result['sentences']} sentences of ~{result['words']} words "
             f"({result['corpus']}), {result['sentences_per_request']} per request, "
             f"{result['machine']['cpu']}, {result['machine']['cores']} cores."), "",
             f"Engine alone: {e['tokens_per_s']:,.0f} tokens/s ({e['batches']} batches).", "",
             ("| batching | clients | tokens/s | % of engine | req/s | p50 ms | p95 ms | p99 ms "
             "| mean batch | padding |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for label, rows in (("on", result["batching"]), ("off", result.get("no_batching", []))):
        for r in rows:
            lines.append(f"| {label} | {r['concurrency']} | {r['tokens_per_s']:,.0f} | "
                         f"{100 * r['ratio_to_engine']:.0f}% | {r['requests_per_s']:,.0f} | "
                         f"{r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | "
                         f"{r['mean_batch']:.1f} | {100 * r['padding']:.0f}% |")
    h = result["half_load"]
    lines += ["", (f"Open loop at half the 64-client rate ({h['rate']:.0f} req/s): p50 "
              f"{h['p50']:.1f} ms, p95 {h['p95']:.1f} ms, p99 {h['p99']:.1f} ms, "
              f"p99/p50 {h['p99'] / h['p50']:.2f} (target <= 3).")]
    return "\n".join(lines)

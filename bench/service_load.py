"""Service end to end vs the bare engine, on the same sentences (DESIGN.md performance targets).

1. engine: tokenize everything up front, form batches with the service's own policy and limits,
   time ``engine.run`` alone -> tokens/s.
2. closed loop: the service under uvicorn in a subprocess on loopback, N concurrent httpx
   clients sending the same sentences -> tokens/s, latency percentiles, ratio to the engine.
3. half load: open-loop Poisson arrivals at half the closed-loop request rate -> p50/p95/p99
   (target: p99 <= 3 x p50).

Tokens are scored tokens ([CLS]/[SEP] excluded), the same count on both sides. The load
generator shares the machine with the server; its CPU time is printed so the figures can be
read for what they are. Usage:

    python bench/service_load.py --artifact models/electric-minilm --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.artifact import load_manifest
from service.batching import next_batch, pad, resolve_limits
from service.engine import CUDA, OnnxEngine
from service.settings import Settings
from service.tokenization import SentenceTokenizer

CORPUS = Path("/work/shared/corpora/brown.txt.gz")
FILLER_TEXT = ("the of and to a in that is was he for it with as his on be at by had not are but "
          "from or have an they which one you were her all she there would their we him been "
          "has when who will more no if out so said what up its about into than them can only "
          "other new some could time these two may then do first any my now such like our over "
          "man me even most made after also did many before must through back years where much "
          "your way well down should because each just those people how too little state good "
          "very make world still own see men work long get here between both life being under "
          "never day same another know while last might us great old year off come since against "
          "go came right used take three")
FILLER = FILLER_TEXT.split()


def load_sentences(n: int, words: int, seed: int) -> list[str]:
    """``n`` sentences of about ``words`` words: from the Brown corpus when present."""
    rng = random.Random(seed)
    if CORPUS.is_file():
        with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
            lines = [ln.strip() for ln in f if words // 2 <= len(ln.split()) <= words * 2]
        if len(lines) >= n:
            return rng.sample(lines, n)
    return [" ".join(rng.choice(FILLER) for _ in range(max(1, int(rng.gauss(words, words / 3)))))
            for _ in range(n)]


def percentiles(latencies: list[float]) -> dict[str, float]:
    a = np.array(latencies) * 1000
    return {f"p{q}": float(np.percentile(a, q)) for q in (50, 95, 99)}


def bench_engine(args: argparse.Namespace, sentences: list[str]) -> dict[str, float]:
    folder = Path(args.artifact)
    manifest = load_manifest(folder)
    tok = SentenceTokenizer.from_file(folder / manifest.tokenizer.file,
                                      manifest.architecture.max_positions)
    engine = OnnxEngine.load(folder, manifest, args.variant, args.threads)
    encoded = tok.encode(sentences, truncate=True)
    limits = resolve_limits(engine.providers[0] == CUDA, args.max_batch_tokens,
                            args.max_batch_size, args.sort_window, args.max_padding)
    # The batches the policy would form with every sentence queued at once: the engine's best.
    queue = list(range(len(encoded)))
    batches = []
    while queue:
        picked = next_batch([encoded[i].length for i in queue], limits)
        batches.append([queue[i] for i in picked])
        queue = [q for i, q in enumerate(queue) if i not in set(picked)]
    padded = [pad([encoded[i].ids for i in b], manifest.tokenizer.pad_id) for b in batches]
    for ids, mask in padded[:3]:  # warm-up
        engine.run(ids, mask)
    best, cpu = float("inf"), float("inf")
    for _ in range(args.repeats):
        start, cpu0 = time.perf_counter(), time.process_time()
        for ids, mask in padded:
            engine.run(ids, mask)
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - cpu0)
    tokens = sum(e.num_tokens for e in encoded)
    return {"tokens": tokens, "seconds": best, "tokens_per_s": tokens / best,
            "tokens_per_cpu_s": tokens / cpu, "batches": len(batches),
            "variant": engine.variant}  # type: ignore[dict-item]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ELECTRIC_ARTIFACT": str(Path(args.artifact).resolve()),
           "ELECTRIC_VARIANT": args.variant, "ELECTRIC_PORT": str(port),
           "ELECTRIC_INTRA_OP_THREADS": str(args.threads),
           "ELECTRIC_MAX_BATCH_SIZE": str(args.max_batch_size),
           "ELECTRIC_SORT_WINDOW": str(args.sort_window),
           "ELECTRIC_REQUEST_TIMEOUT_S": "120", "ELECTRIC_LOG_LEVEL": "warning",
           "PYTHONPATH": str(ROOT)}
    if args.max_batch_tokens is not None:
        env["ELECTRIC_MAX_BATCH_TOKENS"] = str(args.max_batch_tokens)
    if args.max_padding is not None:
        env["ELECTRIC_MAX_PADDING"] = str(args.max_padding)
    code = "from service.server import run; run()"
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT)


async def wait_ready(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as probe:
        for _ in range(600):
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                if (await probe.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("server not ready after 60 s")


async def read_metrics(port: int) -> str:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as probe:
        return (await probe.get("/metrics")).text


async def closed_loop(client: Client, requests: list[list[str]],
                      concurrency: int) -> tuple[float, int, list[float]]:
    latencies: list[float] = []
    tokens = 0
    todo = iter(requests)

    async def worker() -> None:
        nonlocal tokens
        for batch in todo:
            t0 = time.perf_counter()
            scored = await score(client, batch)  # not `tokens += await ...`: that loses updates
            tokens += scored
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, tokens, latencies


async def open_loop(client: Client, requests: list[list[str]],
                    rate: float, seed: int) -> list[float]:
    """Poisson arrivals at ``rate`` requests/s, independent of how fast answers come."""
    rng = random.Random(seed)
    latencies: list[float] = []

    async def one(batch: list[str]) -> None:
        t0 = time.perf_counter()
        await score(client, batch)
        latencies.append(time.perf_counter() - t0)

    tasks = []
    next_at = time.perf_counter()
    for batch in requests:
        next_at += rng.expovariate(rate)
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        tasks.append(asyncio.ensure_future(one(batch)))
    await asyncio.gather(*tasks)
    return latencies


class RawClient:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams, one connection per worker.

    httpx costs ~4 ms of CPU per request at 64 connections on a 2-core machine (its pool
    scales with the connection count), more than the server spends: on a shared machine it
    measures the client. This one costs ~0.1 ms, so the cores go to the server.
    """

    def __init__(self, port: int):
        self.port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, payload: dict[str, object]) -> tuple[int, bytes]:
        body = json.dumps(payload).encode()
        request = (f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json"
                   f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        while self._idle:  # a kept-alive connection the server may have closed meanwhile
            try:
                return await self._exchange(self._idle.pop(), request)
            except (asyncio.IncompleteReadError, ConnectionError):
                continue
        return await self._exchange(await asyncio.open_connection("127.0.0.1", self.port),
                                    request)

    async def _exchange(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                        request: bytes) -> tuple[int, bytes]:
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(ln.split(b":")[1]) for ln in lines
                      if ln.lower().startswith(b"content-length:"))
        data = await reader.readexactly(length)
        self._idle.append(conn)
        return int(lines[0].split()[1]), data

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()


class HttpxClient:
    def __init__(self, port: int, connections: int):
        limits = httpx.Limits(max_connections=connections,
                              max_keepalive_connections=connections)
        self._client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits,
                                         timeout=120)

    async def post(self, path: str, payload: dict[str, object]) -> tuple[int, bytes]:
        response = await self._client.post(path, json=payload)
        return response.status_code, response.content

    async def aclose(self) -> None:
        await self._client.aclose()


Client = RawClient | HttpxClient


async def score(client: Client, batch: list[str]) -> int:
    """Scored tokens in the answer to one /v1/score request."""
    status, data = await client.post("/v1/score", {"sentences": batch, "truncate": True})
    if status != 200:
        raise RuntimeError(f"/v1/score answered {status}: {data[:200]!r}")
    return sum(r["num_tokens"] for r in json.loads(data)["results"])


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {series with labels: value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_service(args: argparse.Namespace, sentences: list[str]) -> dict[str, object]:
    port = free_port()
    proc = start_server(args, port)
    k = args.sentences_per_request
    requests = [sentences[i:i + k] for i in range(0, len(sentences), k)]
    client: Client = (RawClient(port) if args.client == "raw"
                      else HttpxClient(port, args.concurrency))
    try:
        await wait_ready(port, proc)
        await closed_loop(client, requests[: args.concurrency * 2], args.concurrency)
        before = parse_metrics(await read_metrics(port))
        server_cpu0 = cpu_seconds(proc.pid)
        client_cpu0 = time.process_time()
        best: tuple[float, int, list[float]] | None = None
        for _ in range(args.repeats):
            run = await closed_loop(client, requests, args.concurrency)
            if best is None or run[0] < best[0]:
                best = run
        assert best is not None
        server_cpu = cpu_seconds(proc.pid) - server_cpu0
        client_cpu = time.process_time() - client_cpu0
        after = parse_metrics(await read_metrics(port))
        moved = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
        seconds, tokens, latencies = best
        rate = len(requests) / seconds
        half = await open_loop(client, requests[: max(200, len(requests) // 2)],
                               rate / 2, args.seed)
        await client.aclose()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    batches = max(1.0, moved["electric_batch_size_count"])
    phase = {"mean_batch": moved["electric_batch_size_sum"] / batches,
             "batches_per_s": batches / (seconds * args.repeats),
             "mean_inference_ms": 1000 * moved["electric_inference_duration_seconds_sum"] / batches,
             "mean_queue_wait_ms": 1000 * moved["electric_queue_wait_seconds_sum"]
             / max(1.0, moved["electric_queue_wait_seconds_count"]),
             "padding": 1 - moved['electric_batch_tokens_sum{kind="real"}']
             / max(1.0, moved['electric_batch_tokens_sum{kind="padded"}'])}
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "tokens_per_cpu_s": tokens * args.repeats / server_cpu,
            "requests_per_s": rate, "closed": percentiles(latencies), "half": percentiles(half),
            "server_cpu_s": server_cpu / args.repeats, "client_cpu_s": client_cpu / args.repeats,
            **phase, "exit_code": proc.returncode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", default=str(Settings().artifact))
    parser.add_argument("--variant", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="ORT intra-op threads, both sides")
    parser.add_argument("--sentences", type=int, default=2048)
    parser.add_argument("--words", type=int, default=20, help="mean words per sentence")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sentences-per-request", type=int, default=1)
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="default: the service's device default")
    parser.add_argument("--max-batch-size", type=int, default=Settings().max_batch_size)
    parser.add_argument("--sort-window", type=int, default=Settings().sort_window)
    parser.add_argument("--max-padding", type=float, default=None,
                        help="default: the service's device default")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="load generator: raw asyncio HTTP/1.1 (cheap) or httpx")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    sentences = load_sentences(args.sentences, args.words, args.seed)
    engine = bench_engine(args, sentences)
    service = asyncio.run(bench_service(args, sentences))
    ratio = float(service["tokens_per_s"]) / float(engine["tokens_per_s"])  # type: ignore[arg-type]
    if args.json:
        print(json.dumps({"engine": engine, "service": service, "ratio": ratio,
                          "load_average": os.getloadavg()}))
        return
    closed, half = service["closed"], service["half"]
    assert isinstance(closed, dict) and isinstance(half, dict)
    print(f"artifact {args.artifact} variant {engine['variant']} threads {args.threads or 'all'} "
          f"cpus {os.cpu_count()} sentences {len(sentences)} tokens {engine['tokens']} "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"engine   {engine['tokens_per_s']:9.0f} tokens/s  ({engine['batches']} batches)")
    print(f"service  {service['tokens_per_s']:9.0f} tokens/s  {service['requests_per_s']:.0f} req/s"
          f"  {args.client} client, concurrency {args.concurrency} x "
          f"{args.sentences_per_request} sentences"
          )
    print(f"batches  {service['batches_per_s']:.0f}/s, mean {service['mean_batch']:.1f} sequences, "
          f"{service['mean_inference_ms']:.1f} ms inference, {service['padding']:.0%} padding, "
          f"queue wait {service['mean_queue_wait_ms']:.1f} ms")
    print(f"ratio    {ratio:9.1%} of the engine (target >= 85%)")
    efficiency = float(service["tokens_per_cpu_s"]) / float(engine["tokens_per_cpu_s"])  # type: ignore[arg-type]
    print(f"per CPU-second: engine {engine['tokens_per_cpu_s']:.0f}, service "
          f"{service['tokens_per_cpu_s']:.0f} tokens ({efficiency:.1%}); on a shared machine "
          "this is the steadier comparison")
    print("latency at full load   p50 {p50:.1f} ms  p95 {p95:.1f} ms  p99 {p99:.1f} ms".format(
        **closed))
    print("latency at half load   p50 {p50:.1f} ms  p95 {p95:.1f} ms  p99 {p99:.1f} ms"
          "  (p99/p50 {r:.2f}, target <= 3)".format(r=half["p99"] / half["p50"], **half))
    print(f"cpu per run: server {service['server_cpu_s']:.1f} s, load generator "
          f"{service['client_cpu_s']:.1f} s, wall {service['seconds']:.1f} s; "
          f"server exit code {service['exit_code']}")


if __name__ == "__main__":
    main()

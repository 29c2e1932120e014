"""A soak: mixed load on one server for minutes, sampling what would show a leak.

    python -m bench.soak [--seconds 480] [--interval 10] [--json OUT] [--plot PNG]

Starts ``electric serve`` on the embedded model and runs, all at once for ``--seconds``:
- 8 clients of one-sentence /v1/score requests (keep-alive),
- 2 clients of 64-sentence requests of 5-120 words,
- 2 clients of /v1/rerank, 4 lists of 5 hypotheses each,
- 1 client of bad input: invalid JSON, a wrong type, an empty list, a body over the size
  limit, a sentence over the character limit (each must get its 4xx),
- 1 client that disconnects: sends a valid request on a raw socket and closes it before the
  answer (the batcher must drop the work, nothing must leak),
- 1 slow client: trickles a valid body over about a second, then reads the answer.

Every ``--interval`` seconds it records the server's RSS, open file descriptors and threads,
and the p50/p99 of the valid requests answered in that interval. The summary says how RSS,
descriptors and threads moved after the first two minutes (warm-up: allocator and ONNX Runtime
arenas grow to the shapes the load brings), which statuses came back (5xx: none), and whether
every request got an answer (client errors and timeouts: none).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.launch import Server, proc_status
from bench.machine import describe
from bench.memory_load import WORDS
from bench.timing import percentiles

WARMUP_S = 120.0


class Tally:
    """Statuses, latencies of valid requests, and failures, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.latencies: list[float] = []  # since the last sample
        self.failures: Counter[str] = Counter()

    def record(self, kind: str, status: int | str, seconds: float | None = None) -> None:
        with self.lock:
            self.statuses[f"{kind} {status}"] += 1
            if seconds is not None:
                self.latencies.append(seconds)

    def fail(self, kind: str, exc: Exception) -> None:
        with self.lock:
            self.failures[f"{kind}: {type(exc).__name__}"] += 1

    def take_latencies(self) -> list[float]:
        with self.lock:
            out, self.latencies = self.latencies, []
        return out


def _sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(WORDS, k=rng.randint(low, high)))


def _loop(stop: float, tally: Tally, kind: str,
          step: Callable[[random.Random], None], seed: int) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop:
        try:
            step(rng)
        except (httpx.HTTPError, OSError) as exc:  # a finding, not a crash of the soak
            tally.fail(kind, exc)


def _http_client(url: str, tally: Tally, kind: str,
                 body: Callable[[random.Random], dict[str, Any]], path: str,
                 ) -> Callable[[random.Random], None]:
    client = httpx.Client(base_url=url, timeout=60)

    def step(rng: random.Random) -> None:
        start = time.perf_counter()
        response = client.post(path, json=body(rng))
        ok = response.status_code == 200
        tally.record(kind, response.status_code, time.perf_counter() - start if ok else None)

    return step


def _bad_client(url: str, tally: Tally) -> Callable[[random.Random], None]:
    client = httpx.Client(base_url=url, timeout=60)
    bodies: list[tuple[str, bytes]] = [
        ("invalid json", b'{"sentences": ["unterminated'),
        ("wrong type", b'{"sentences": "not a list"}'),
        ("empty list", b'{"sentences": []}'),
        ("too many characters", json.dumps({"sentences": ["x" * 40_000]}).encode()),
        ("body over the limit", json.dumps({"sentences": ["word " * 300_000]}).encode()),
    ]

    def step(rng: random.Random) -> None:
        name, body = rng.choice(bodies)
        response = client.post("/v1/score", content=body,
                               headers={"Content-Type": "application/json"})
        tally.record(f"bad ({name})", response.status_code)
        time.sleep(0.05)

    return step


def _raw_post(url: str, body: bytes) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=30)
    conn.sendall(b"POST /v1/score HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    return conn


def _leaving_client(url: str, tally: Tally) -> Callable[[random.Random], None]:
    def step(rng: random.Random) -> None:
        body = json.dumps({"sentences": [_sentence(rng, 20, 60) for _ in range(16)]}).encode()
        conn = _raw_post(url, body)
        conn.sendall(body)
        time.sleep(rng.uniform(0.0, 0.02))
        conn.close()  # before the answer
        tally.record("disconnect", "closed")
        time.sleep(0.1)

    return step


def _slow_client(url: str, tally: Tally) -> Callable[[random.Random], None]:
    def step(rng: random.Random) -> None:
        body = json.dumps({"sentences": [_sentence(rng, 5, 20)]}).encode()
        start = time.perf_counter()
        with _raw_post(url, body) as conn:
            for i in range(0, len(body), max(1, len(body) // 10)):
                conn.sendall(body[i:i + max(1, len(body) // 10)])
                time.sleep(0.1)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                answer += chunk
        status = answer.split(b" ", 2)[1].decode() if answer.startswith(b"HTTP/1.1") else "none"
        tally.record("slow", status, time.perf_counter() - start if status == "200" else None)

    return step


def run(seconds: float, interval: float) -> dict[str, Any]:
    with Server({"request_timeout_s": 30}) as server:
        url, pid = server.url, server.pid
        tally = Tally()
        stop = time.monotonic() + seconds
        clients: list[tuple[str, Callable[[random.Random], None]]] = [
            *[("score 1", _http_client(url, tally, "score 1",
                                       lambda r: {"sentences": [_sentence(r, 5, 30)]},
                                       "/v1/score")) for _ in range(8)],
            *[("score 64", _http_client(url, tally, "score 64", lambda r: {
                "sentences": [_sentence(r, 5, 120) for _ in range(64)]}, "/v1/score"))
              for _ in range(2)],
            *[("rerank", _http_client(url, tally, "rerank", lambda r: {"lists": [
                {"id": f"u{i}", "hypotheses": [_sentence(r, 5, 25) for _ in range(5)]}
                for i in range(4)]}, "/v1/rerank")) for _ in range(2)],
            ("bad", _bad_client(url, tally)),
            ("disconnect", _leaving_client(url, tally)),
            ("slow", _slow_client(url, tally)),
        ]
        threads = [threading.Thread(target=_loop, args=(stop, tally, kind, step, seed),
                                    daemon=True)
                   for seed, (kind, step) in enumerate(clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        samples: list[dict[str, Any]] = []
        while time.monotonic() < stop:
            time.sleep(min(interval, max(0.0, stop - time.monotonic())))
            latencies = tally.take_latencies()
            ms = percentiles(latencies) if latencies else {}
            samples.append({
                "t_s": round(time.monotonic() - start, 1),
                "rss_mib": round(proc_status(pid, "VmRSS") / 1024, 1),
                "fds": len(os.listdir(f"/proc/{pid}/fd")),
                "threads": proc_status(pid, "Threads"),
                "answered": len(latencies),
                "p50_ms": ms.get("p50"),
                "p99_ms": ms.get("p99")})
        for t in threads:
            t.join(timeout=90)
        metrics = server.metrics()
    return {
        "machine": describe(), "seconds": seconds, "interval_s": interval, "samples": samples,
        "statuses": dict(sorted(tally.statuses.items())),
        "client_failures": dict(tally.failures),
        "summary": summarise(samples, tally.statuses, tally.failures, metrics.get(
            'electric_requests_total{endpoint="/v1/score",status="499"}', 0.0)),
    }


def summarise(samples: list[dict[str, Any]], statuses: Counter[str],
              failures: Counter[str], client_gone: float) -> dict[str, Any]:
    """First, highest and last reading after warm-up of each resource; 5xx and failures."""
    settled = [s for s in samples if s["t_s"] >= WARMUP_S] or samples

    def span(key: str) -> list[float]:
        return [settled[0][key], max(s[key] for s in settled), settled[-1][key]]

    return {
        "warmup_s": WARMUP_S,
        "rss_mib_after_warmup": span("rss_mib"),
        "fds_after_warmup": span("fds"),
        "threads_after_warmup": span("threads"),
        "five_xx": {k: v for k, v in sorted(statuses.items())
                    if k.rsplit(" ", 1)[-1].startswith("5")},
        "unanswered": sum(failures.values()),
        "server_client_gone": client_gone,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(t, [s["rss_mib"] for s in samples], marker=".")
    axes[0].set(title="server RSS (MiB)", xlabel="minutes")
    axes[1].plot(t, [s["fds"] for s in samples], marker=".", label="open fds")
    axes[1].plot(t, [s["threads"] for s in samples], marker=".", label="threads")
    axes[1].set(title="descriptors and threads", xlabel="minutes")
    axes[1].legend(fontsize=8)
    axes[2].plot(t, [s["p50_ms"] for s in samples], marker=".", label="p50")
    axes[2].plot(t, [s["p99_ms"] for s in samples], marker=".", label="p99")
    axes[2].set(title="valid requests (ms)", xlabel="minutes", yscale="log")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.axvline(WARMUP_S / 60, color="gray", linestyle=":", linewidth=1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=480.0)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    result = run(args.seconds, args.interval)
    print(json.dumps({k: result[k] for k in ("statuses", "client_failures", "summary")},
                     indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Memory and fairness under hostile and heavy requests, against a real server on loopback.

``python bench/memory_load.py [--root DIR] [--mixed-s 60]`` starts ``electric serve`` from DIR
(default: this checkout; point it at an older tree for a before/after) on the embedded model,
samples the server's resident memory every 50 ms, and prints one JSON line per scenario:

- bang: three concurrent ``{"sentences": ["!" * 1_000_000]}`` (one token per character).
- spaces: six concurrent ``"a " * 300_000``.
- valid_large: four concurrent valid requests of 64 sentences of 120 words.
- largest: the largest request the schema admits (256 sentences of 510 tokens) while a small
  client scores one sentence at a time; the big one's answer and the small one's latencies.
- mixed: 32 clients for ``--mixed-s`` seconds, requests of 1-64 sentences of 5-120 words and
  one in twenty oversized.

Each line has the statuses, seconds, and RSS before / at peak / 2 s after in MiB. Run it alone
on the machine: RSS is the server's own, but the latencies share the CPU with this client.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench import launch
from bench.launch import Server, proc_status
from bench.machine import recorded_tree

WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with",
         "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but",
         "have", "an", "they", "you", "were", "her", "she", "there", "been", "one", "all", "we",
         "their", "has", "would", "when", "if", "so", "no", "will", "more", "said", "what", "up",
         "its", "about", "into", "than", "them", "can", "only", "other"]


class RssSampler:
    """The server's VmRSS every ``interval_s`` in a background thread, in MiB."""

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(proc_status(self.pid, "VmRSS") / 1024)
            self._stop.wait(self.interval_s)

    @contextmanager
    def sampling(self) -> Iterator[RssSampler]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def _post(client: httpx.Client, body: dict[str, Any]) -> tuple[int, float]:
    start = time.perf_counter()
    try:
        status = client.post("/v1/score", json=body).status_code
    except httpx.HTTPError as exc:
        return -1 if not isinstance(exc, httpx.TimeoutException) else -2, 0.0
    return status, time.perf_counter() - start


def _concurrently(url: str, bodies: list[dict[str, Any]]) -> list[tuple[int, float]]:
    results: list[tuple[int, float]] = [(0, 0.0)] * len(bodies)

    def one(i: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            results[i] = _post(client, bodies[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def scenario(srv: Server, name: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    before = proc_status(srv.pid, "VmRSS") / 1024
    sampler = RssSampler(srv.pid)
    start = time.perf_counter()
    with sampler.sampling():
        out = run()
        wall = time.perf_counter() - start
        time.sleep(2.0)
    after = proc_status(srv.pid, "VmRSS") / 1024
    return {"scenario": name, "wall_s": round(wall, 2), "rss_before_mib": round(before),
            "rss_peak_mib": round(max(sampler.samples, default=before)),
            "rss_after_mib": round(after), **out,
            "rss_mib": [round(x, 1) for x in sampler.samples]}


def bang(url: str) -> dict[str, Any]:
    results = _concurrently(url, [{"sentences": ["!" * 1_000_000]}] * 3)
    return {"statuses": dict(Counter(s for s, _ in results)),
            "latency_s": [round(t, 2) for _, t in results]}


def spaces(url: str) -> dict[str, Any]:
    results = _concurrently(url, [{"sentences": ["a " * 300_000]}] * 6)
    return {"statuses": dict(Counter(s for s, _ in results)),
            "latency_s": [round(t, 2) for _, t in results]}


def valid_large(url: str) -> dict[str, Any]:
    """Four concurrent valid requests of 64 sentences of ~120 words: what serving them leaves."""
    rng = random.Random(0)
    bodies = [{"sentences": [" ".join(rng.choices(WORDS, k=120)) for _ in range(64)]}
              for _ in range(4)]
    results = _concurrently(url, bodies)
    return {"statuses": dict(Counter(s for s, _ in results)),
            "latency_s": [round(t, 2) for _, t in results]}


def largest(url: str) -> dict[str, Any]:
    # "the " is one token; 510 of them fill the model, [CLS] and [SEP] aside.
    big_body = {"sentences": [("the " * 510).strip()] * 256}
    done = threading.Event()
    small: list[tuple[int, float]] = []

    def small_client() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not done.is_set():
                small.append(_post(client, {"sentences": ["the cat sat on the mat"]}))

    thread = threading.Thread(target=small_client)
    with httpx.Client(base_url=url, timeout=120) as client:
        thread.start()
        time.sleep(0.5)
        status, seconds = _post(client, big_body)
        done.set()
    thread.join()
    latencies = sorted(t for s, t in small if s == 200)
    return {"big_status": status, "big_s": round(seconds, 2),
            "small_statuses": dict(Counter(s for s, _ in small)),
            "small_p50_s": round(latencies[len(latencies) // 2], 3) if latencies else None,
            "small_max_s": round(latencies[-1], 3) if latencies else None}


def mixed(url: str, seconds: float, clients: int = 32) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=60) as client:
            while time.perf_counter() < stop:
                if rng.random() < 0.05:  # oversized: refused, but it must not cost memory
                    body = {"sentences": ["!" * rng.randint(20_000, 200_000)]}
                else:
                    body = {"sentences": [" ".join(rng.choices(WORDS, k=rng.randint(5, 120)))
                                          for _ in range(rng.randint(1, 64))]}
                status, _ = _post(client, body)
                with lock:
                    statuses[status] += 1

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"clients": clients, "statuses": dict(statuses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=launch.ROOT,
                        help="the tree whose service to start (for a before/after)")
    parser.add_argument("--mixed-s", type=float, default=60.0)
    parser.add_argument("--only", nargs="*",
                        default=["bang", "spaces", "valid_large", "largest", "mixed"])
    parser.add_argument("--samples", type=Path,
                        help="also write the figures and every scenario's RSS samples (MiB, 50 ms "
                             "apart) here, e.g. bench/results/memory-after.json")
    args = parser.parse_args()
    launch.ROOT = args.root.resolve()
    tree = recorded_tree(args.root)
    artifact = (Path(__file__).resolve().parent.parent / "models" / "electric-minilm")
    runs: dict[str, Callable[[str], dict[str, Any]]] = {
        "bang": bang, "spaces": spaces, "valid_large": valid_large, "largest": largest,
        "mixed": lambda url: mixed(url, args.mixed_s)}
    with Server({"artifact": artifact}) as srv:
        print(json.dumps({"root": tree, "ready_s": round(srv.ready_s, 1),
                          "rss_ready_mib": round(proc_status(srv.pid, "VmRSS") / 1024)}))
        curves, summaries = {}, []
        for name in args.only:
            result = scenario(srv, name, lambda run=runs[name]: run(srv.url))
            curves[name] = result.pop("rss_mib")
            summaries.append(result)
            print(json.dumps(result), flush=True)
    if args.samples:  # bench/results/memory-{before,after}.json feed `electric bench plot`
        args.samples.write_text(json.dumps({"root": tree, "interval_s": 0.05,
                                            "scenarios": summaries, "rss_mib": curves}))


if __name__ == "__main__":
    main()

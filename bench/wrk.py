"""Load from wrk (https://github.com/wg/wrk), a C client that costs the server's machine little.

One wrk thread on N keep-alive connections sends POST /v1/score with the bodies of a file
round-robin (bench/wrk_score.lua), closed loop (each connection sends its next request when
the last is answered) or open loop at a given rate. The script's ``done`` hook prints one JSON
line that :func:`parse_output` reads: requests answered, statuses other than 200, socket
errors, latency percentiles. wrk's own CPU time is measured too, so a result says what the
client took from the machine.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "wrk_score.lua"
MARKER = "electric-wrk "
"""Start of the line the script's ``done`` hook prints."""


@dataclass(frozen=True)
class Load:
    """One load point, from wrk or from the Python fallback client (bench/python_load.py)."""

    connections: int
    """Connections the client opened."""
    requests: int
    """Answers received (any status) within the run."""
    seconds: float
    """How long the load ran."""
    window_ok: int
    """200 answers received within the window (the whole run when none was given)."""
    window_s: float
    """The window's length: throughput is ``window_ok / window_s``."""
    non_200: dict[int, int]
    """Answers with a status other than 200, by status."""
    errors: int
    """Socket errors: connect, read, write, and requests that timed out."""
    p50_ms: float
    p95_ms: float
    p99_ms: float
    client_cpu_s: float
    """CPU time the load generator used."""
    late: int = 0
    """Open loop: arrivals sent more than 1 ms after their time, for want of a free connection."""
    extra: dict[str, float] = field(default_factory=dict)
    """Further latency figures (p90, max, mean) in ms where the client has them."""

    @property
    def requests_per_s(self) -> float:
        """200 answers per second within the window."""
        return self.window_ok / self.window_s

    @property
    def failures(self) -> int:
        return sum(self.non_200.values()) + self.errors


def available() -> str | None:
    """The wrk binary on PATH, or None."""
    return shutil.which("wrk")


def parse_output(text: str) -> dict[str, object]:
    """The JSON the script prints, from wrk's whole stdout; ValueError when it is not there."""
    for line in text.splitlines():
        if line.startswith(MARKER):
            parsed: dict[str, object] = json.loads(line[len(MARKER):])
            return parsed
    raise ValueError(f"no {MARKER.strip()!r} line in wrk's output:\n{text[-2000:]}")


def load_from(parsed: dict[str, object], connections: int, client_cpu_s: float,
              window: tuple[float, float] | None = None) -> Load:
    """A :class:`Load` from :func:`parse_output`'s dictionary; ``window``: the one the script
    was given, (from, to) in seconds."""
    latency, errors = parsed["latency_us"], parsed["errors"]
    non_200, counted = parsed["non_200"], parsed["window"]
    assert isinstance(latency, dict) and isinstance(errors, dict)
    assert isinstance(non_200, dict) and isinstance(counted, dict)
    seconds = int(str(parsed["duration_us"])) / 1e6
    return Load(connections=connections, requests=int(str(parsed["requests"])),
                seconds=seconds, window_ok=int(counted["ok"]),
                window_s=seconds if window is None else window[1] - window[0],
                non_200={int(k): int(v) for k, v in non_200.items()},
                errors=sum(int(v) for v in errors.values()),
                p50_ms=latency["p50"] / 1000, p95_ms=latency["p95"] / 1000,
                p99_ms=latency["p99"] / 1000,
                client_cpu_s=client_cpu_s, late=int(str(parsed.get("late", 0))),
                extra={"p90_ms": latency["p90"] / 1000, "max_ms": latency["max"] / 1000,
                       "mean_ms": latency["mean"] / 1000})


def run(url: str, bodies: Path, connections: int, seconds: float,
        window: tuple[float, float] | None = None, rate: float | None = None,
        timeout_s: float = 60.0) -> Load:
    """wrk against ``url`` (http://host:port/v1/score) for ``seconds`` (whole seconds, at
    least 1), closed loop, or open loop at ``rate`` requests/s; 200 answers are counted apart
    within ``window`` ((from, to) seconds from the start). Raises RuntimeError when wrk
    fails."""
    binary = available()
    if binary is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    env = dict(os.environ)
    env.pop("WRK_SCORE_RATE", None)
    if rate is not None:
        env["WRK_SCORE_RATE"] = f"{rate:.6f}"
    # wrk counts whole seconds; the timeout is generous so a slow answer is a latency, not a
    # socket error (wrk leaves timed-out requests out of its latency figures).
    command = [binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
               f"--timeout={max(1, round(timeout_s))}s", "--latency", "-s", str(SCRIPT), url,
               "--", str(bodies), *(f"{t:.3f}" for t in window or ())]
    # RUSAGE_CHILDREN counts the children waited for: here, wrk alone (the server is waited
    # for only when it stops).
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return load_from(parse_output(done.stdout), connections, cpu, window)

"""A real ``electric serve`` process on loopback for the benchmarks, and a cheap load client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {series with labels: value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def proc_status(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status (VmRSS: resident now, VmHWM: resident peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


SERVE = ("electric.cli", "serve")
"""``python -m electric.cli serve``: the service as users run it."""
NULL_SERVE = ("bench.null_server",)
"""The same service with the ONNX call replaced by a no-op (bench/null_server.py)."""


class Server:
    """``with Server(settings) as s:`` starts the service and waits until /readyz says 200."""

    def __init__(self, settings: dict[str, Any], ready_timeout: float = 120.0,
                 command: tuple[str, ...] = SERVE):
        """``command``: the module to run with ``python -m`` and its arguments."""
        self.port = free_port()
        self.settings = settings
        self.command = command
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready_s = float("nan")

    def __enter__(self) -> Server:  # noqa: PYI034 (typing.Self needs Python 3.11)
        env = {**os.environ, "ELECTRIC_PORT": str(self.port), "ELECTRIC_LOG_LEVEL": "warning",
               "PYTHONPATH": str(ROOT)}
        env.update({f"ELECTRIC_{k.upper()}": str(v) for k, v in self.settings.items()})
        start = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", *self.command], env=env, cwd=ROOT)
        with httpx.Client(base_url=self.url, timeout=5) as probe:
            while time.perf_counter() - start < self.ready_timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}")
                try:
                    if probe.get("/readyz").status_code == 200:
                        self.ready_s = time.perf_counter() - start
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.02)
        self.__exit__()
        raise RuntimeError(f"server not ready after {self.ready_timeout:.0f} s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def metrics(self) -> dict[str, float]:
        return parse_metrics(httpx.get(self.url + "/metrics", timeout=10).text)


class RawClient:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams.

    httpx costs ~4 ms of CPU per request at 64 connections on a 2-core machine, more than the
    server spends, so on a shared machine it would measure the client. This costs ~0.1 ms.
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
        self._idle.clear()


async def score(client: RawClient, batch: list[str]) -> int:
    """Scored tokens in the answer to one /v1/score request."""
    status, data = await client.post("/v1/score", {"sentences": batch, "truncate": True})
    if status != 200:
        raise RuntimeError(f"/v1/score answered {status}: {data[:200]!r}")
    return sum(r["num_tokens"] for r in json.loads(data)["results"])

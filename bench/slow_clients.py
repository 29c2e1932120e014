"""Slow, idle and odd clients against a real server on loopback: what each costs and when it is cut.

``python bench/slow_clients.py [--root DIR]`` starts ``electric serve`` from DIR (default: this
checkout; point it at an older tree for a before/after) on the embedded model and prints one
line per probe as JSON:

- idle: a socket that sends nothing; seconds until the server closes it (capped).
- slowloris: a request head at one byte a second; seconds until cut, and the answer.
- no_body: a POST declaring 100 bytes that sends none; seconds to the answer, and its status.
- idle_flood: 1,100 idle sockets at ``ulimit -n 1024``; whether /healthz still answers.
- keyless_slots: 70 keyless POSTs trickling a 500,000-byte body against 64 request slots;
  what a keyed client then gets.
- per_peer: 8 keyed POSTs trickling bodies from one address; how many get 429 at once.
- urllib_413: Python's urllib sending 1.1 MB (over the 1 MiB limit) before reading; outcomes.
- minor: HEAD, ``gzip, chunked``, the trailing-slash redirect, ``%2f``, a 5,000-digit
  integer, /metrics after a 400 and a 431, X-API-Key spacing and an empty X-API-Key.

Every wait has a timeout, so a server that never cuts a client shows the cap, not a hang.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(root: Path, nofile: int | None = None, **settings: str) -> Iterator[int]:
    """The service from ``root`` on a free port (yielded once /readyz is 200)."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(root), "ELECTRIC_PORT": str(port),
           "ELECTRIC_LOG_LEVEL": "error", "ELECTRIC_WARMUP": "false",
           "ELECTRIC_INTRA_OP_THREADS": "1",
           "ELECTRIC_ARTIFACT": str(root / "models" / "electric-minilm"),
           **{f"ELECTRIC_{k.upper()}": v for k, v in settings.items()}}

    def limit_files() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    with tempfile.TemporaryFile() as log, subprocess.Popen(
            [sys.executable, "-c", "from service.server import run; run()"], cwd=root, env=env,
            stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=limit_files) as proc:  # noqa: PLW1509 (this script starts no threads)
        try:
            for _ in range(600):
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(log.read().decode(errors="replace"))
                if _status(port, b"GET /readyz HTTP/1.1\r\nHost: b\r\n\r\n") == 200:
                    break
                time.sleep(0.1)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def _answer(conn: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes, or until ``timeout``."""
    conn.settimeout(timeout)
    out = b""
    try:
        while chunk := conn.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def _status(port: int, request: bytes, timeout: float = 5.0) -> int | str:
    try:
        with _connect(port, timeout) as conn:
            conn.sendall(request)
            answer = _answer(conn, timeout)
    except OSError as exc:
        return type(exc).__name__
    return int(answer.split()[1]) if answer.startswith(b"HTTP/") else f"no answer {answer[:40]!r}"


def _closed_after(conn: socket.socket, step: Callable[[int], None],
                  cap_s: float) -> tuple[float, bytes]:
    """Seconds until the server closes ``conn`` (``step(i)`` runs each second), and what came."""
    start = time.monotonic()
    conn.setblocking(False)
    got = b""
    i = 0
    while time.monotonic() - start < cap_s:
        try:
            chunk = conn.recv(65536)
            if not chunk:
                return time.monotonic() - start, got
            got += chunk
        except BlockingIOError:
            pass
        except OSError:
            return time.monotonic() - start, got
        if time.monotonic() - start >= i:
            try:
                step(i)
            except OSError:
                return time.monotonic() - start, got
            i += 1
        time.sleep(0.05)
    return float("inf"), got


def _first_line(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].decode(errors="replace")


def idle_and_slow(port: int) -> None:
    with _connect(port) as conn:
        seconds, _ = _closed_after(conn, lambda i: None, 20)
        _emit("idle", closed_after_s=round(seconds, 1))
    with _connect(port) as conn:
        head = b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Slow: " + b"a" * 100
        seconds, got = _closed_after(conn, lambda i: conn.send(head[i:i + 1]), 25)
        _emit("slowloris", cut_after_s=round(seconds, 1), answer=_first_line(got))
    with _connect(port) as conn:
        conn.sendall(b"POST /v1/tokenize HTTP/1.1\r\nHost: b\r\nContent-Length: 100\r\n\r\n")
        seconds, got = _closed_after(conn, lambda i: None, 20)
        _emit("no_body", answered_after_s=round(seconds, 1), answer=_first_line(got))


def idle_flood(root: Path) -> None:
    with server(root, nofile=1024) as port, ExitStack() as stack:
        opened = 0
        for _ in range(1100):
            try:
                stack.enter_context(_connect(port, 2))
                opened += 1
            except OSError:
                break
        time.sleep(1.0)
        statuses = [_status(port, b"GET /healthz HTTP/1.1\r\nHost: b\r\n\r\n", 3)
                    for _ in range(5)]
        _emit("idle_flood", opened=opened, healthz=statuses)


def _trickler(port: int, key: str | None) -> socket.socket:
    conn = _connect(port)
    auth = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""
    conn.sendall(b"POST /v1/score HTTP/1.1\r\nHost: b\r\n" + auth +
                 b"Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n{")
    return conn


def _post(port: int, key: str | None) -> int | str:
    body = b'{"sentences": ["the cat sat"]}'
    auth = b"Authorization: Bearer %s\r\n" % key.encode() if key else b""
    return _status(port, b"POST /v1/score HTTP/1.1\r\nHost: b\r\n" + auth +
                   b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def keyless_slots(root: Path) -> None:
    with server(root, api_keys=KEY, max_concurrent_requests="64") as port, ExitStack() as stack:
        attackers = [stack.enter_context(_trickler(port, None)) for _ in range(70)]
        time.sleep(1.0)
        for conn in attackers:  # one more byte each: the slots stay taken
            try:
                conn.send(b" ")
            except OSError:
                pass
        _emit("keyless_slots", keyed=[_post(port, KEY) for _ in range(5)],
              keyless=[_post(port, None) for _ in range(3)])


def per_peer(root: Path) -> None:
    with server(root, api_keys=KEY, max_requests_per_peer="4") as port, ExitStack() as stack:
        held = [stack.enter_context(_trickler(port, KEY)) for _ in range(8)]
        time.sleep(1.0)
        answers = Counter()
        for conn in held:
            conn.settimeout(0.5)
            try:
                answers[_first_line(conn.recv(4096)) or "closed"] += 1
            except TimeoutError:
                answers["held"] += 1
        _emit("per_peer", answers=dict(answers))


def urllib_413(port: int) -> None:
    outcomes: Counter[str] = Counter()
    for _ in range(10):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/score", data=b"x" * 1_100_000,
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=10).close()
            outcomes["200"] += 1
        except urllib.error.HTTPError as exc:
            outcomes[str(exc.code)] += 1
        except OSError as exc:
            outcomes[type(exc).__name__] += 1
    _emit("urllib_413", outcomes=dict(outcomes))


def _raw(port: int, request: bytes) -> bytes:
    with _connect(port) as conn:
        conn.sendall(request)
        return _answer(conn, 5)


def minor(port: int) -> None:
    head = _raw(port, b"HEAD /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    gzip = _raw(port, b"POST /v1/tokenize HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
                      b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    slash = _raw(port, b"GET /v1/model/ HTTP/1.1\r\nHost: evil.example\r\n"
                       b"Connection: close\r\n\r\n")
    encoded = _raw(port, b"GET /v1%2fmodel HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    digits = b'{"sentences": ["a"], "truncate": ' + b"1" * 5000 + b"}"
    big_int = _raw(port, b"POST /v1/score HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(digits), digits))
    _raw(port, b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n")
    _raw(port, b"GARBAGE\r\n\r\n")
    metrics = _raw(port, b"GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    counted = [line.decode() for line in metrics.splitlines()
               if b'status="400"' in line or b'status="431"' in line
               or b'reason="header_too_large"' in line or b'reason="bad_request"' in line]
    location = [line for line in slash.split(b"\r\n") if line.lower().startswith(b"location")]
    _emit("minor", head=_first_line(head), gzip_chunked=_first_line(gzip),
          trailing_slash=[_first_line(slash), *(x.decode() for x in location)],
          percent_2f=_first_line(encoded), big_int_hint=b"set_int_max_str_digits" in big_int,
          metrics_400_431=counted)


def keys(root: Path) -> None:
    with server(root, api_keys=KEY) as port:
        body = b'{"sentences": ["a"]}'

        def post(headers: bytes) -> int | str:
            return _status(port, b"POST /v1/tokenize HTTP/1.1\r\nHost: b\r\n" + headers +
                           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

        _emit("keys", padded_x_api_key=post(b"X-API-Key:  %s \r\n" % KEY.encode()),
              empty_x_api_key_with_bearer=post(
                  b"X-API-Key:\r\nAuthorization: Bearer %s\r\n" % KEY.encode()))


def _emit(probe: str, **figures: Any) -> None:
    print(json.dumps({"probe": probe, **figures}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    root = args.root.resolve()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))  # the flood's sockets
    wanted = set(args.only or ["single", "idle_flood", "keyless_slots", "per_peer", "keys"])
    if "single" in wanted:
        with server(root) as port:
            idle_and_slow(port)
            urllib_413(port)
            minor(port)
    for name, probe in (("idle_flood", idle_flood), ("keyless_slots", keyless_slots),
                        ("per_peer", per_peer), ("keys", keys)):
        if name in wanted:
            probe(root)


if __name__ == "__main__":
    main()

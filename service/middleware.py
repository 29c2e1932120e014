"""ASGI middleware: API keys, admission limits (concurrent requests in all and per client
address, body size and time), HEAD as GET, JSON bodies whatever the declared type, gzip for
clients that ask, per-request metrics and the access log.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which runs the app in another task and
so hides a client disconnect from the handler (the batcher drops a gone client's work).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from starlette.middleware.gzip import GZipResponder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    BadRequest,
    BodyTimeout,
    ClientGone,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
)
from service.http_errors import error_response
from service.metrics import Metrics

access_logger = logging.getLogger("electric.access")

# Paths are the client's text: logged JSON-escaped and cut to this length.
_MAX_LOGGED_PATH = 200

# The key of ``scope["extensions"]`` under which service/server.py gives a request a callable
# that says whether its whole body has arrived (then BodyLimit reads it without timers).
BODY_BUFFERED = "electric.body_buffered"

# Bounded label values: the route table, anything else is "other".
ENDPOINTS = frozenset({"/v1/score", "/v1/rerank", "/v1/tokenize", "/v1/model", "/healthz",
                       "/readyz", "/metrics", "/docs", "/openapi.json", "/rerank", "/redoc", "/",
                       "/ui"})


def _digest(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def presented_key(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The key a request carries: ``X-API-Key``, else ``Authorization: Bearer <key>``; both
    trimmed, and an empty X-API-Key stands for none (so it cannot hide a valid Bearer)."""
    api_key = authorization = b""
    for name, value in headers:
        if name == b"x-api-key" and not api_key:
            api_key = value.strip()
        elif name == b"authorization" and not authorization:
            authorization = value
    if api_key:
        return api_key
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip() or None
    return None


class ApiKeys:
    """401 for a request to one of ``paths`` (the keyed routes) without a valid key, from its
    headers alone: before it takes a request slot or a byte of its body is read, so keyless
    clients cannot crowd out keyed ones, and nothing is parsed for a stranger.

    Keys are compared as SHA-256 digests, all 32 bytes, so compare_digest's time says nothing
    about a key's length; every key is compared, so nothing tells which one matched.
    """

    def __init__(self, app: ASGIApp, keys: list[SecretStr], paths: Collection[str],
                 metrics: Metrics):
        self.app, self.paths, self.metrics = app, frozenset(paths), metrics
        self.digests = [_digest(k.get_secret_value().encode("utf-8", "surrogateescape"))
                        for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] == "OPTIONS"  # CORS preflight
                or scope["path"] not in self.paths):
            await self.app(scope, receive, send)
            return
        given = presented_key(scope["headers"])
        presented = _digest(given or b"")
        matches = [hmac.compare_digest(presented, digest) for digest in self.digests]
        if given is None or not any(matches):
            # The message never echoes what was sent: it may be a key for something else.
            exc = Unauthorized("missing or unknown API key; send 'Authorization: Bearer <key>'")
            await _refuse(exc, self.metrics, scope, receive, send)
            return
        await self.app(scope, receive, send)


class ConcurrencyLimit:
    """429 for a POST arriving while ``limit`` others are in progress (or ``per_peer`` others
    from its client address, when set), before its body is read.

    The queue bounds sequences waiting for the engine; this bounds the requests around them
    (bodies being read, texts being tokenized), so that memory stays bounded whatever the
    number of connections, and one client cannot take every slot. GET (probes, metrics,
    model info) is never refused here.
    """

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics, per_peer: int = 0):
        self.app, self.limit, self.metrics, self.per_peer = app, limit, metrics, per_peer
        self.active = 0
        self.by_peer: dict[str, int] = {}  # only peers with a request in progress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        peer = client[0] if client else ""
        exc = None
        if self.active >= self.limit:
            exc = Overloaded(f"{self.active} requests are in progress; the limit is {self.limit}",
                             retry_after_s=1)
        elif self.per_peer and self.by_peer.get(peer, 0) >= self.per_peer:
            exc = Overloaded(f"{self.by_peer[peer]} requests from {peer} are in progress; the "
                             f"limit per client address is {self.per_peer}", retry_after_s=1)
        if exc is not None:
            await _refuse(exc, self.metrics, scope, receive, send)
            return
        self.active += 1
        self.by_peer[peer] = self.by_peer.get(peer, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
            self.by_peer[peer] -= 1
            if not self.by_peer[peer]:
                del self.by_peer[peer]


async def _refuse(exc: ServiceError, metrics: Metrics, scope: Scope, receive: Receive,
                  send: Send) -> None:
    """Answer before reading the body; Connection: close, so the server does not read it."""
    metrics.reject(exc.type)
    response = error_response(exc)
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


class BodyLimit:
    """413 for a body over ``max_bytes``, declared (Content-Length) or streamed (chunked);
    408 for one whose first byte has not come within ``start_timeout_s`` or that has not
    fully arrived within ``timeout_s``; 400 for a transfer coding other than chunked.

    The body is read here, up to the limit, and replayed to the app; after it the app's
    ``receive`` is the server's again, so a disconnect still reaches it. The timeouts keep a
    client that declares a body and sends none, or trickles it, from holding a request slot
    for long; service/server.py bounds connections and heads, not bodies.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, metrics: Metrics,
                 start_timeout_s: float | None = None):
        self.app, self.max_bytes, self.timeout_s, self.metrics = app, max_bytes, timeout_s, metrics
        self.start_timeout_s = min(start_timeout_s or timeout_s, timeout_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        coding = _unsupported_coding(scope["headers"])
        if coding is not None:
            # The server would pass a gzip body on as if it were plain (RFC 9112 6.1: a
            # coding the server does not understand must not be ignored).
            await _refuse(BadRequest(f"Transfer-Encoding {coding!r} is not supported; only "
                                     "chunked is (send the body uncompressed)"),
                          self.metrics, scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            exc: ServiceError = PayloadTooLarge(
                f"the request body has {int(declared)} bytes; the limit is {self.max_bytes}")
            await _refuse(exc, self.metrics, scope, receive, send)
            return
        extensions = scope.get("extensions")
        buffered = extensions.get(BODY_BUFFERED) if extensions else None
        body = (await self._read_buffered(receive) if buffered is not None and buffered()
                else await self._read(receive))
        if isinstance(body, ServiceError):
            # Also answered when the client is gone (the server drops it): metrics show 499.
            await _refuse(body, self.metrics, scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read_buffered(self, receive: Receive) -> bytes | ServiceError:
        """The body the server already holds whole: one message (``more_body`` false), which
        ``receive`` gives without waiting, so there is nothing to time."""
        message = await receive()
        if message["type"] != "http.request":
            return ClientGone("the client disconnected while sending its body")
        chunk: bytes = message.get("body", b"")
        if len(chunk) > self.max_bytes:
            return PayloadTooLarge(f"the request body has {len(chunk)} bytes; the limit is "
                                   f"{self.max_bytes}")
        return chunk

    async def _read(self, receive: Receive) -> bytes | ServiceError:
        """The whole body, or why there is none to give the app."""
        chunks: list[bytes] = []
        size = 0
        started = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        try:
            async with asyncio.timeout(self.start_timeout_s) as timer:
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # gone while sending the body
                        return ClientGone("the client disconnected while sending its body")
                    chunk: bytes = message.get("body", b"")
                    more = message.get("more_body", False)
                    if not started:
                        if not more and len(chunk) <= self.max_bytes:
                            return chunk  # the whole body at once: no deadline to move
                        started = True
                        timer.reschedule(deadline)
                    size += len(chunk)
                    if size > self.max_bytes:
                        return PayloadTooLarge(f"the request body has more than "
                                               f"{self.max_bytes} bytes; the limit is "
                                               f"{self.max_bytes}")
                    chunks.append(chunk)
                    if not more:
                        return b"".join(chunks)
        except TimeoutError:
            if not started:
                return BodyTimeout(f"no byte of the request body arrived within "
                                   f"{self.start_timeout_s:g} s of its head")
            return BodyTimeout(f"the request body did not arrive within {self.timeout_s:g} s "
                               f"({size} bytes came)")


def _unsupported_coding(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The Transfer-Encoding value when it names a coding other than chunked, else None."""
    for name, value in headers:
        if name == b"transfer-encoding" and any(
                c.strip().lower() not in (b"chunked", b"") for c in value.split(b",")):
            return value.decode("latin-1")[:_MAX_LOGGED_PATH]
    return None


class HeadAsGet:
    """HEAD on a GET route answers as GET would, without the body (RFC 9110 9.3.2).
    FastAPI's routes list GET alone, so HEAD /healthz would otherwise be 405."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app(dict(scope, method="GET"), receive, headers_only)


class JsonContentType:
    """Read every POST body as JSON, whatever Content-Type the client declared.

    The API takes JSON only, and ``curl -d '{...}'`` (the first thing a user tries) declares
    ``application/x-www-form-urlencoded``. Without this, FastAPI would not parse such a body
    and answer 422 for valid JSON.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = dict(scope, headers=headers)
        await self.app(scope, receive, send)


class GzipWhenAsked:
    """gzip for a client that sends ``Accept-Encoding: gzip``, by Starlette's own responder
    (bodies of at least ``minimum_size`` bytes, streamed ones too); every other request passes
    untouched.

    Starlette's GZipMiddleware also wraps the answers of clients that do not ask, to parse
    their headers and add ``Vary: Accept-Encoding`` to the large ones: under one-sentence
    requests its frames were about 4% of the event loop's time in a profile. An uncompressed
    answer is the same whichever coding was asked for, so nothing needs that Vary.
    """

    def __init__(self, app: ASGIApp, minimum_size: int, compresslevel: int):
        self.app, self.minimum_size, self.compresslevel = app, minimum_size, compresslevel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"accept-encoding":
                    if b"gzip" in value:
                        responder = GZipResponder(self.app, self.minimum_size,
                                                  compresslevel=self.compresslevel)
                        await responder(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)


class RequestMetrics:
    """requests_total{endpoint,status}, request_duration_seconds{endpoint}, in-flight gauge;
    with ``access_log``, one JSON line per request on the ``electric.access`` logger.

    The log line holds what an operator needs to trace a request and nothing a client could
    regret sending: no body, no query string, no header (so never an API key).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = False):
        self.app, self.metrics, self.access_log = app, metrics, access_log
        # prometheus_client's labels() hashes and locks on every call: keep the children.
        self._counted: dict[tuple[str, int], Any] = {}
        self._timed: dict[str, Any] = {}
        # A plain count, read when scraped: no lock taken twice per request.
        self.in_flight = 0
        metrics.in_flight.set_function(lambda: self.in_flight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = 500  # what the client sees if the app dies before starting a response
        sent_bytes = 0
        start = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status, sent_bytes
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent_bytes += len(message.get("body", b""))
            await send(message)

        self.in_flight += 1
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - start
            self.in_flight -= 1
            counted = self._counted.get((endpoint, status))
            if counted is None:
                counted = self._counted[endpoint, status] = self.metrics.requests.labels(
                    endpoint=endpoint, status=str(status))
            counted.inc()
            timed = self._timed.get(endpoint)
            if timed is None:
                timed = self._timed[endpoint] = self.metrics.request_duration.labels(
                    endpoint=endpoint)
            timed.observe(elapsed)
            if self.access_log:
                _log_access(scope, status, elapsed, sent_bytes)


def _log_access(scope: Scope, status: int, elapsed: float, sent_bytes: int) -> None:
    declared = dict(scope["headers"]).get(b"content-length", b"")
    client = scope.get("client")
    access_logger.info(json.dumps({
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "client": client[0] if client else None,
        "method": scope["method"],
        "path": scope["path"][:_MAX_LOGGED_PATH],
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
        "request_bytes": int(declared) if declared.isdigit() else None,
        "response_bytes": sent_bytes,
        # Set by service/request_context.py, inside this middleware: the X-Request-ID echoed.
        "request_id": scope.get("state", {}).get("request_id"),
    }))

"""ASGI middleware: admission limits (concurrent requests, body size), JSON bodies whatever
the declared type, per-request metrics and the access log.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which runs the app in another task and
so hides a client disconnect from the handler (the batcher drops a gone client's work).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import (
    BodyTimeout,
    ClientGone,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    error_response,
)
from service.metrics import Metrics

access_logger = logging.getLogger("electric.access")

# Paths are the client's text: logged JSON-escaped and cut to this length.
_MAX_LOGGED_PATH = 200

# Bounded label values: the route table, anything else is "other".
ENDPOINTS = frozenset({"/v1/score", "/v1/rerank", "/v1/tokenize", "/v1/model", "/healthz",
                       "/readyz", "/metrics", "/docs", "/openapi.json"})


class ConcurrencyLimit:
    """429 for a POST arriving while ``limit`` others are in progress, before its body is read.

    The queue bounds sequences waiting for the engine; this bounds the requests around them
    (bodies being read, texts being tokenized), so that memory stays bounded whatever the
    number of connections. GET (probes, metrics, model info) is never refused here.
    """

    def __init__(self, app: ASGIApp, limit: int, metrics: Metrics):
        self.app, self.limit, self.metrics = app, limit, metrics
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            exc = Overloaded(f"{self.active} requests are in progress; the limit is {self.limit}",
                             retry_after_s=1)
            await _refuse(exc, self.metrics, scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


async def _refuse(exc: ServiceError, metrics: Metrics, scope: Scope, receive: Receive,
                  send: Send) -> None:
    """Answer before reading the body; Connection: close, so the server does not read it."""
    metrics.reject(exc.type)
    response = error_response(exc)
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


class BodyLimit:
    """413 for a body over ``max_bytes``, declared (Content-Length) or streamed (chunked);
    408 for one that has not fully arrived within ``timeout_s``.

    The body is read here, up to the limit, and replayed to the app; after it the app's
    ``receive`` is the server's again, so a disconnect still reaches it. The timeout keeps a
    client that trickles its body (or stops sending) from holding a request slot for ever;
    uvicorn bounds idle connections and headers, not bodies.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float, metrics: Metrics):
        self.app, self.max_bytes, self.timeout_s, self.metrics = app, max_bytes, timeout_s, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            exc: ServiceError = PayloadTooLarge(
                f"the request body has {int(declared)} bytes; the limit is {self.max_bytes}")
            await _refuse(exc, self.metrics, scope, receive, send)
            return
        body = await self._read(receive)
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

    async def _read(self, receive: Receive) -> bytes | ServiceError:
        """The whole body, or why there is none to give the app."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # gone while sending the body
                        return ClientGone("the client disconnected while sending its body")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        return PayloadTooLarge(f"the request body has more than "
                                               f"{self.max_bytes} bytes; the limit is "
                                               f"{self.max_bytes}")
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            return BodyTimeout(f"the request body did not arrive within {self.timeout_s:g} s "
                               f"({size} bytes came)")


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


class RequestMetrics:
    """requests_total{endpoint,status}, request_duration_seconds{endpoint}, in-flight gauge;
    with ``access_log``, one JSON line per request on the ``electric.access`` logger.

    The log line holds what an operator needs to trace a request and nothing a client could
    regret sending: no body, no query string, no header (so never an API key).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = False):
        self.app, self.metrics, self.access_log = app, metrics, access_log

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

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.request_duration.labels(endpoint=endpoint).observe(elapsed)
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
    }))

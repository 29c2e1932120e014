"""ASGI middleware: the request-body limit and per-request metrics.

Plain ASGI rather than Starlette's BaseHTTPMiddleware, which runs the app in another task and
so hides a client disconnect from the handler (the batcher drops a gone client's work).
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, error_response
from service.metrics import Metrics

# Bounded label values: the route table, anything else is "other".
ENDPOINTS = frozenset({"/v1/score", "/v1/rerank", "/v1/tokenize", "/v1/model", "/healthz",
                       "/readyz", "/metrics", "/docs", "/openapi.json"})


class BodyLimit:
    """413 for a body over ``max_bytes``, declared (Content-Length) or streamed (chunked).

    The body is read here, up to the limit, and replayed to the app; after it the app's
    ``receive`` is the server's again, so a disconnect still reaches it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, metrics: Metrics):
        self.app, self.max_bytes, self.metrics = app, max_bytes, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(f"{int(declared)} bytes", scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # disconnected while sending the body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(f"more than {self.max_bytes} bytes", scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, found: str, scope: Scope, receive: Receive, send: Send) -> None:
        exc = PayloadTooLarge(f"the request body has {found}; the limit is {self.max_bytes}")
        self.metrics.reject(exc.type)
        response = error_response(exc)
        # Connection: close, so the server does not try to read the rest of a huge body.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


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
    """requests_total{endpoint,status}, request_duration_seconds{endpoint}, in-flight gauge."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = 500  # what the client sees if the app dies before starting a response
        start = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()
            self.metrics.request_duration.labels(endpoint=endpoint).observe(
                time.perf_counter() - start)

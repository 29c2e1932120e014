"""Per-request context: the request id (X-Request-ID) and the timing headers TEI sends.

Every response carries ``x-request-id``: the client's own when it is sane (visible ASCII, at
most 128 characters), else a new uuid4 hex, so that a client, the access log and an operator
name the same request. The id is also put in ``scope["state"]["request_id"]``, where the
access log (service/middleware.py ``RequestMetrics``) reads it.

Timing follows text-embeddings-inference: ``x-total-time`` (always) and ``x-queue-time`` /
``x-inference-time`` (when the request reached the engine), whole milliseconds. The batcher
adds to the :class:`~service.timing.RequestTiming` that ``current_timing`` holds for the
request (service/timing.py).

Plain ASGI, like service/middleware.py, so that a client disconnect still reaches the handler.
"""

from __future__ import annotations

import os
import re
import time

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body
from service.timing import RequestTiming, current_timing

MAX_REQUEST_ID_CHARS = 128
# Visible ASCII only: the id is echoed in a header and written to logs, so no spaces, control
# characters or bytes another tool might read as a separator.
_SANE_ID = re.compile(rb"[!-~]{1,%d}" % MAX_REQUEST_ID_CHARS)


def request_id_of(header: bytes | None) -> str:
    """The client's X-Request-ID if it is sane, else a fresh one."""
    if header is not None and _SANE_ID.fullmatch(header):
        return header.decode("ascii")
    return new_request_id()


def new_request_id() -> str:
    """A random (version 4) UUID in hex, as ``uuid.uuid4().hex`` gives, in a third of the
    time: the same 16 random bytes with the version and variant bits set in place."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    return raw.hex()


def _ms(seconds: float) -> bytes:
    return b"%d" % round(seconds * 1000)


class RequestContext:
    """Assign the request id, start the timing, and stamp both on the response's headers.

    Wraps everything but the metrics, so the limits' refusals carry the id too. An exception
    that escapes the app before a response started is answered here (the same 500 body as
    service/errors.py's handler) so that it also carries the id an operator greps the log for;
    it is re-raised for the server to log.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(dict(scope["headers"]).get(b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        timing = RequestTiming()
        start = time.perf_counter()
        started = False

        async def stamped(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # Appended as raw pairs: nothing inside sets these names.
                headers = message.setdefault("headers", [])
                if not isinstance(headers, list):
                    headers = message["headers"] = list(headers)
                headers.append((b"x-request-id", request_id.encode("ascii")))
                headers.append((b"x-total-time", _ms(time.perf_counter() - start)))
                if timing.queue_s:
                    headers.append((b"x-queue-time", _ms(timing.queue_s)))
                if timing.inference_s:
                    headers.append((b"x-inference-time", _ms(timing.inference_s)))
            await send(message)

        token = current_timing.set(timing)
        try:
            await self.app(scope, receive, stamped)
        except Exception:
            if not started:
                response = JSONResponse(
                    error_body("internal", "internal error; the server log has details"), 500)
                await response(scope, receive, stamped)
            raise
        finally:
            current_timing.reset(token)

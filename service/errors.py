"""What the service refuses, and the one JSON shape every refusal takes.

::

    ServiceError                 base; a message safe to show a client
    ├── BadRequest               400  not HTTP/1.1, or a transfer coding other than chunked
    ├── InvalidInput             422  empty text, too many tokens, bad numbers
    ├── Unauthorized             401  missing or wrong API key
    ├── PayloadTooLarge          413  body, sentence count or hypothesis count over its limit
    ├── BodyTimeout              408  the body did not arrive in time (a stalled client)
    │   └── HeadTimeout               the request head did not either
    ├── HeaderTooLarge           431  request line and headers over their limit
    ├── Overloaded               429  queue full (carries Retry-After)
    ├── InferenceFailed          500  the engine raised on the batch holding this request
    ├── NotReady                 503  loading, warming up or draining
    ├── TooManyConnections       503  past max_connections (carries Retry-After); probes pass
    ├── DeadlineExceeded         504  not answered by the request's deadline
    └── ClientGone               499  the client disconnected; its queued work was dropped

Every response body is ``{"error": {"type": ..., "message": ...}}``. Messages state the value
and the limit; internals (paths, stack traces) stay in the server log. BadRequest, HeadTimeout,
HeaderTooLarge and TooManyConnections are mostly answered by the server's protocol
(service/server.py), before a request reaches the app.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.schemas import UNION_TAGS
from service.tokenization import TooLong, TooManyChars


class ServiceError(Exception):
    """A refusal the client may see. ``type`` is a stable machine-readable name."""

    type = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str] | None:
        return None


class BadRequest(ServiceError):
    type = "bad_request"


class InvalidInput(ServiceError):
    type = "invalid_input"


class Unauthorized(ServiceError):
    type = "unauthorized"

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class PayloadTooLarge(ServiceError):
    type = "payload_too_large"


class BodyTimeout(ServiceError):
    type = "request_timeout"


class HeadTimeout(BodyTimeout):
    pass


class HeaderTooLarge(ServiceError):
    type = "header_too_large"


class Overloaded(ServiceError):
    type = "overloaded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}


class InferenceFailed(ServiceError):
    type = "inference_failed"


class NotReady(ServiceError):
    type = "not_ready"


class TooManyConnections(ServiceError):
    type = "too_many_connections"

    def headers(self) -> dict[str, str] | None:
        return {"Retry-After": "1"}


class DeadlineExceeded(ServiceError):
    type = "deadline_exceeded"


class ClientGone(ServiceError):
    type = "client_gone"


STATUS: dict[type[ServiceError], int] = {
    BadRequest: 400,
    InvalidInput: 422,
    Unauthorized: 401,
    PayloadTooLarge: 413,
    BodyTimeout: 408,
    HeaderTooLarge: 431,
    Overloaded: 429,
    InferenceFailed: 500,
    NotReady: 503,
    TooManyConnections: 503,
    DeadlineExceeded: 504,
    # nginx's code for "client closed request": nobody reads it, but logs and metrics do.
    ClientGone: 499,
}

# Router refusals (unknown path, wrong method) in the same shape.
_HTTP_TYPES = {400: BadRequest.type, 404: "not_found", 405: "method_not_allowed"}
_DIGITS = re.compile(r"value has (\d+) digits")
_MAX_LISTED = 5
_MAX_QUOTED = 40


def error_body(type_: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message}}


def status_of(exc: ServiceError) -> int:
    """The status of the nearest class in the table (subclasses refine messages, not codes)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(exc.type, exc.message), status_code=status_of(exc),
                        headers=exc.headers())


def too_long(exc: TooLong, where: str) -> InvalidInput:
    """The 422 for a text the tokenizer refused (service/tokenization.py), naming its place in
    the request as the client wrote it: ``sentences[3]``, ``lists[2].hypotheses[0]``."""
    if isinstance(exc, TooManyChars):
        return InvalidInput(
            f"{where} has {exc.chars} characters; at most {exc.max_chars} are tokenized, far "
            'more than the model scores. Send "truncate": true to score its beginning')
    return InvalidInput(f"{where} has {exc.num_tokens} tokens, the model scores at most "
                        f'{exc.max_tokens}; send "truncate": true to cut it')


def _location(loc: tuple[Any, ...]) -> str:
    """``('body', 'sentences', 3)`` -> ``sentences[3]``: the path a client wrote (union tags,
    which pydantic puts in the path, left out)."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if part in UNION_TAGS:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def _shown(value: Any) -> str | None:
    """A scalar input as the message may quote it (the client's own value, cut short)."""
    if isinstance(value, bool | int | float) or value is None:
        return repr(value) if not isinstance(value, bool) else str(value).lower()
    if isinstance(value, str):
        # ascii(): control characters and lone surrogates show as escapes, never raw.
        return ascii(value if len(value) <= _MAX_QUOTED else value[:_MAX_QUOTED] + "...")
    return None


def validation_message(errors: list[dict[str, Any]]) -> str:
    """Pydantic's errors as one line: where, what rule (its messages name the limit), and the
    value the client sent when it is a scalar."""
    parts = []
    for err in errors[:_MAX_LISTED]:
        if err.get("type") == "json_invalid":
            loc = tuple(err.get("loc", ()))
            reason = str(err.get("ctx", {}).get("error", "parse error")).removesuffix(" at")
            where = f" at character {loc[1]}" if len(loc) > 1 and isinstance(loc[1], int) else ""
            parts.append(f"body is not valid JSON ({reason}{where})")
            continue
        part = f"{_location(tuple(err.get('loc', ())))}: {err.get('msg', 'invalid')}"
        shown = _shown(err.get("input")) if "input" in err else None
        if shown is not None and err.get("type") != "missing":
            part += f" (got {shown})"
        parts.append(part)
    if len(errors) > _MAX_LISTED:
        parts.append(f"and {len(errors) - _MAX_LISTED} more")
    return "; ".join(parts)


def unparsable_body(cause: BaseException | None) -> str | None:
    """Why a body could not be read as JSON, for what ``json.loads`` raises besides
    JSONDecodeError (FastAPI turns those into a bare 400); None for anything else."""
    if isinstance(cause, UnicodeDecodeError):
        return (f"body is not UTF-8 (byte {cause.object[cause.start]:#04x} at offset "
                f"{cause.start})")
    if isinstance(cause, RecursionError):
        return (f"body nests JSON arrays or objects deeper than the parser allows (about "
                f"{sys.getrecursionlimit()} levels)")
    if isinstance(cause, ValueError):  # an integer literal past Python's 4300-digit limit
        # Python's own message advises sys.set_int_max_str_digits(), which is not the
        # client's to call: say what was sent and the limit instead.
        digits = _DIGITS.search(str(cause))
        sent = f"{digits.group(1)} digits" if digits else "too many digits"
        limit = sys.get_int_max_str_digits()
        return (f"body holds an integer of {sent}; the limit is {limit} digits (send it as a "
                f"string or a float)")
    return None


def install_error_handlers(app: FastAPI, on_refusal: Callable[[str], None]) -> None:
    """Route every refusal through one shape; ``on_refusal(type)`` feeds the rejection metric."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        on_refusal(exc.type)
        return error_response(exc)

    async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        on_refusal(InvalidInput.type)
        return JSONResponse(error_body(InvalidInput.type, validation_message(list(exc.errors()))),
                            status_code=422)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        problem = unparsable_body(exc.__cause__) if exc.status_code == 400 else None
        if problem is not None:
            on_refusal(InvalidInput.type)
            return JSONResponse(error_body(InvalidInput.type, problem), status_code=422)
        if exc.status_code == 400:
            on_refusal(BadRequest.type)
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(type_, str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises after this response, so the server logs the traceback once.
        return JSONResponse(error_body("internal", "internal error; the server log has details"),
                            status_code=500)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)

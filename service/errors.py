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
(service/server.py), before a request reaches the app. This module imports no HTTP library, so the
batcher and the model host can raise these; service/http_errors.py turns them into responses.
"""

from __future__ import annotations

from typing import Any

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


def error_body(type_: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message}}


def status_of(exc: ServiceError) -> int:
    """The status of the nearest class in the table (subclasses refine messages, not codes)."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def too_long(exc: TooLong, where: str) -> InvalidInput:
    """The 422 for a text the tokenizer refused (service/tokenization.py), naming its place in
    the request as the client wrote it: ``sentences[3]``, ``lists[2].hypotheses[0]``."""
    if isinstance(exc, TooManyChars):
        return InvalidInput(
            f"{where} has {exc.chars} characters; at most {exc.max_chars} are tokenized, far "
            'more than the model scores. Send "truncate": true to score its beginning')
    return InvalidInput(f"{where} has {exc.num_tokens} tokens, the model scores at most "
                        f'{exc.max_tokens}; send "truncate": true to cut it')

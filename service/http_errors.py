"""Refusals as HTTP responses: service/errors.py's classes, pydantic's validation errors and the
router's own 400/404/405, all in the one ``{"error": {"type", "message"}}`` shape."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import BadRequest, InvalidInput, ServiceError, error_body, status_of
from service.schemas import UNION_TAGS

# Router refusals (unknown path, wrong method) in the same shape.
_HTTP_TYPES = {400: BadRequest.type, 404: "not_found", 405: "method_not_allowed"}
_DIGITS = re.compile(r"value has (\d+) digits")
_MAX_LISTED = 5
_MAX_QUOTED = 40


def error_response(exc: ServiceError) -> JSONResponse:
    return JSONResponse(error_body(exc.type, exc.message), status_code=status_of(exc),
                        headers=exc.headers())


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

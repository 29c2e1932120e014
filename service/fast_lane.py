"""``POST /v1/score`` without the framework's routing on the way: the one-sentence hot path.

Every request still passes the service's own middleware (metrics, request id and timing, the
limits, the API key); only what FastAPI adds per request is skipped for a body that is valid:
its exception, exit-stack and routing layers, dependency resolution, validating the answer
against the response model and encoding it. Under one-sentence requests those cost about as
much as everything else the event loop does (docs/PERFORMANCE.md).

The lane answers only what it is sure of. A body that does not validate as
:class:`~service.schemas.ScoreRequest` goes on, replayed, to the FastAPI route, so every
refusal of a malformed body reads exactly as before (the route is the one the OpenAPI document
describes, and still serves every body). A refusal the host raises (limits, not ready, deadline,
client gone) is answered here in the service's error shape and counted, as the route's handler
would.
"""

from __future__ import annotations

from pydantic import ValidationError
from pydantic_core import to_json
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.deps import check_count
from service.disconnect import client_of
from service.errors import InvalidInput, ServiceError
from service.http_errors import error_response
from service.model_host import ModelHost
from service.schemas import ScoreRequest
from service.tokenization import Encoded

PATH = "/v1/score"
_JSON_HEADERS = [(b"content-type", b"application/json")]


def refuse_empty(encoded: list[Encoded]) -> None:
    """/v1/score's rule: every sentence has a token to score."""
    for i, e in enumerate(encoded):
        if not e.num_tokens:  # e.g. only zero-width or combining characters
            raise InvalidInput(f"sentences[{i}] has no tokens once normalised; /v1/score "
                               "needs at least one")


class ScoreFastLane:
    """Inside the limits, ahead of the content-type and HEAD layers it never needs: answers
    valid ``POST /v1/score`` bodies itself."""

    def __init__(self, app: ASGIApp, host: ModelHost):
        self.app, self.host = app, host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        first = await receive()  # BodyLimit, outside, replays the whole body as one message
        body = first.get("body", b"") if first["type"] == "http.request" else None
        request = None
        if body is not None and not first.get("more_body", False):
            try:
                request = ScoreRequest.model_validate_json(body)
            except ValidationError:
                pass
        if request is None:
            await self.app(scope, _replaying(first, receive), send)
            return
        host = self.host
        try:
            check_count(len(request.sentences), host.max_sentences, "sentences")
            results = await host.infer(request.sentences, request.truncate,
                                       client_of(scope, receive), check=refuse_empty)
        except ServiceError as exc:
            host.metrics.reject(exc.type)
            await error_response(exc)(scope, receive, send)
            return
        payload = to_json({"model": host.model_name, "results": [
            {"score": s.score, "num_tokens": s.num_tokens, "tokens": s.tokens,
             "energies": s.energies, "offsets": s.offsets, "truncated": s.truncated}
            for s in results]})
        await send({"type": "http.response.start", "status": 200, "headers": [
            *_JSON_HEADERS, (b"content-length", str(len(payload)).encode("ascii"))]})
        await send({"type": "http.response.body", "body": payload})


def _replaying(first: Message, receive: Receive) -> Receive:
    """``receive`` that gives ``first`` again, then the server's messages."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return first
        return await receive()

    return replay

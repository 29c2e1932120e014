"""The FastAPI app: routes of the HTTP API (v1), typed dependencies, the lifespan.

``create_app(settings)`` builds an app and loads nothing; the lifespan starts the Runtime
(artifact, tokenizer, engine, batcher) and closes it. Handlers admit, await, shape: limits are
on the schemas and settings, batching is in the batcher, maths is in scoring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from service.engine import EnergyEngine
from service.errors import (
    ClientGone,
    InvalidInput,
    NotReady,
    PayloadTooLarge,
    Unauthorized,
    error_body,
    install_error_handlers,
)
from service.metrics import CONTENT_TYPE
from service.middleware import BodyLimit, ConcurrencyLimit, JsonContentType, RequestMetrics
from service.runtime import Runtime
from service.schemas import (
    ErrorBody,
    ModelInfo,
    RankedList,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    Status,
    TokenizedSentence,
    TokenizeRequest,
    TokenizeResponse,
)
from service.scoring import rank, unique_texts
from service.settings import Settings
from service.tokenization import TooLong

T = TypeVar("T")


async def get_runtime(request: Request) -> Runtime:
    runtime = request.state.runtime  # set by the lifespan below
    assert isinstance(runtime, Runtime)
    return runtime


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def _check_key(request: Request, runtime: Runtime) -> None:
    """With ``ELECTRIC_API_KEYS`` set, /v1 wants ``Authorization: Bearer <key>`` or X-API-Key."""
    keys = runtime.settings.api_keys
    if not keys:
        return
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    # Digests are all 32 bytes, so compare_digest's time says nothing about a key's length,
    # and every key is compared: no early exit that would time-leak which one matched.
    presented = _digest(given or "")
    matches = [hmac.compare_digest(presented, _digest(key.get_secret_value())) for key in keys]
    if given is None or not any(matches):
        # The message never echoes what was sent: it may be a key for something else.
        raise Unauthorized("missing or unknown API key; send 'Authorization: Bearer <key>'")


async def authorized(request: Request) -> Runtime:
    """The runtime, for a client with a valid API key (when keys are configured)."""
    runtime = await get_runtime(request)
    _check_key(request, runtime)
    return runtime


async def metrics_reader(request: Request) -> Runtime:
    """The runtime, for a Prometheus scrape: keyed only with ``metrics_require_key``."""
    runtime = await get_runtime(request)
    if runtime.settings.metrics_require_key:
        _check_key(request, runtime)
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
AuthorizedDep = Annotated[Runtime, Depends(authorized)]
MetricsReaderDep = Annotated[Runtime, Depends(metrics_reader)]


def check_count(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise PayloadTooLarge(f"the request has {count} {what}; the limit is {limit}")


async def _disconnected(request: Request) -> None:
    # The body has been read, so the next ASGI message is the disconnect (or the end of the
    # response, after which nobody awaits this).
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it (and so dropping its queued sequences) if the client goes."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the handler itself was cancelled
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientGone("the client disconnected before its answer was ready")


# What /v1 may answer besides 200, for the OpenAPI document; every body is ErrorBody.
_REFUSALS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (401, "Missing or unknown API key"), (408, "Body not received in time"),
        (413, "Body, sentence or hypothesis count too large"),
        (422, "Invalid input"), (429, "Queue full; retry after Retry-After seconds"),
        (500, "Inference failed"), (503, "Not ready, draining or engine failing"),
        (504, "Deadline passed"))}

# Every /v1 route takes AuthorizedDep, which checks the API key. One dependency per route on
# purpose: FastAPI's dependency resolution costs about as much per request as tokenizing a
# sentence, so admission is a plain `with` in the handler rather than a yield dependency.
v1 = APIRouter(prefix="/v1", responses=_REFUSALS)


@v1.post("/score")
async def score(body: ScoreRequest, request: Request, runtime: AuthorizedDep) -> ScoreResponse:
    """Per-token energies and the sentence score (-sum of energies) of each sentence."""
    check_count(len(body.sentences), runtime.settings.max_sentences, "sentences")
    with runtime.admitted():
        encoded = await runtime.encode(body.sentences, body.truncate)
        for i, e in enumerate(encoded):
            if not e.num_tokens:  # e.g. only zero-width or combining characters
                raise InvalidInput(f"sentences[{i}] has no tokens once normalised; /v1/score "
                                   "needs at least one")
        results = await unless_client_leaves(request, runtime.score(encoded))
    return ScoreResponse(model=runtime.manifest.name, results=results)


@v1.post("/rerank", response_model_exclude_none=True)
async def rerank(body: RerankRequest, request: Request,
                 runtime: AuthorizedDep) -> RerankResponse:
    """Each n-best list sorted by base_score + lm_weight * score + length_bonus * num_tokens."""
    lists = body.all_lists()
    check_count(sum(len(lst.hypotheses) for lst in lists), runtime.settings.max_hypotheses,
                "hypotheses")
    texts = unique_texts(lists)
    with runtime.admitted():
        try:
            encoded = await runtime.encode(texts, body.truncate, "hypotheses")
        except TooLong as exc:
            raise exc.at(body.where(texts[exc.index])) from None
        scores = dict(zip(texts, await unless_client_leaves(request, runtime.score(encoded))))
    weights = runtime.weights(body.lm_weight, body.length_bonus, body.rank_prior)
    ranked = [RankedList(id=lst.id, hypotheses=rank(lst.hypotheses, scores, weights))
              for lst in lists]
    return RerankResponse(
        model=runtime.manifest.name, lm_weight=weights.lm_weight,
        length_bonus=weights.length_bonus, rank_prior=weights.rank_prior,
        hypotheses=ranked[0].hypotheses if body.lists is None else None,
        lists=ranked if body.lists is not None else None)


@v1.post("/tokenize")
async def tokenize(body: TokenizeRequest, runtime: AuthorizedDep) -> TokenizeResponse:
    """The tokens the model would score, with ids and character offsets; no model run."""
    check_count(len(body.sentences), runtime.settings.max_sentences, "sentences")
    with runtime.admitted():
        encoded = await runtime.encode(body.sentences, body.truncate)
    results = [TokenizedSentence(tokens=e.tokens, ids=e.ids[e.scored].tolist(), offsets=e.offsets,
                                 num_tokens=e.num_tokens, truncated=e.truncated) for e in encoded]
    return TokenizeResponse(model=runtime.manifest.name, max_tokens=runtime.tokenizer.max_tokens,
                            results=results)


@v1.get("/model")
async def model(runtime: AuthorizedDep) -> ModelInfo:
    """The manifest (without file names), the variant and execution provider in use."""
    engine = runtime.engine
    return ModelInfo(manifest=runtime.manifest.public(), variant=engine.variant,
                     provider=engine.providers[0] if engine.providers else "unknown",
                     providers=engine.providers, max_tokens=runtime.tokenizer.max_tokens,
                     batching=dataclasses.asdict(runtime.limits) if runtime.limits else {},
                     ready=runtime.ready)


probes = APIRouter()


_PROBE_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"model": Status, "description": "Alive or ready"},
    503: {"model": ErrorBody, "description": "Not alive or not ready; the message says why"}}


@probes.get("/healthz", responses=_PROBE_ANSWERS)
async def healthz(runtime: RuntimeDep) -> Response:
    """Liveness: the process answers and its batcher has not died."""
    if not runtime.alive:
        return JSONResponse(error_body("not_alive", f"the service is {runtime.state}"), 503)
    return JSONResponse(Status(status="ok").model_dump())


@probes.get("/readyz", responses=_PROBE_ANSWERS)
async def readyz(runtime: RuntimeDep) -> Response:
    """Readiness: loaded, warmed up, not draining, engine not failing. Not counted as a
    rejection when 503."""
    if not await runtime.readiness():
        return JSONResponse(error_body(NotReady.type, f"the service is {runtime.state}"), 503)
    return JSONResponse(Status(status="ready").model_dump())


@probes.get("/metrics", response_class=PlainTextResponse, responses={401: {
    "description": "Missing or unknown API key (with metrics_require_key)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}})
async def metrics(runtime: MetricsReaderDep) -> Response:
    """Prometheus text format."""
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)


def build_app(runtime: Runtime) -> FastAPI:
    """The app around an existing (not yet started) runtime; server.py keeps the runtime to
    drain it on SIGTERM."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        try:
            await runtime.start()  # an ArtifactError here fails start-up, as it should
            yield {"runtime": runtime}
        finally:
            await runtime.close()

    app = FastAPI(title="Electric scoring service", version="1",
                  summary="Per-token energies, sentence scores and n-best re-ranking with an "
                          "Electric energy model (Clark et al. 2020).",
                  lifespan=lifespan)
    settings = runtime.settings
    install_error_handlers(app, runtime.metrics.reject)
    app.include_router(v1)
    app.include_router(probes)
    # Each add_middleware wraps what is already there: the last added runs first.
    app.add_middleware(JsonContentType)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.request_timeout_s, metrics=runtime.metrics)
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests,
                       metrics=runtime.metrics)
    if settings.cors_origins:
        # Outside the limits, so that a browser can read their refusals (and Retry-After).
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key"],
            expose_headers=["Retry-After"], max_age=600)
    # Outermost: it also counts and logs what the limits refuse.
    app.add_middleware(RequestMetrics, metrics=runtime.metrics, access_log=settings.access_log)
    return app


def create_app(settings: Settings | None = None, *, engine: EnergyEngine | None = None) -> FastAPI:
    """A new app serving ``settings.artifact``; ``engine`` replaces its ONNX model (tests)."""
    return build_app(Runtime(settings or Settings(), engine))

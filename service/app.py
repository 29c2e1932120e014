"""The FastAPI app: routes of the HTTP API (v1), typed dependencies, the lifespan.

``create_app(settings)`` builds an app and loads nothing; the lifespan starts the ModelHost
(artifact, tokenizer, engine, batcher) and closes it. Handlers admit, await, shape: limits are
on the schemas and settings, batching is in the batcher, maths is in scoring.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute

from service.docs_ui import install_docs
from service.engine import EnergyEngine
from service.errors import (
    ClientGone,
    InvalidInput,
    NotReady,
    PayloadTooLarge,
    error_body,
)
from service.http_errors import install_error_handlers
from service.metrics import CONTENT_TYPE
from service.middleware import (
    ApiKeys,
    BodyLimit,
    ConcurrencyLimit,
    HeadAsGet,
    JsonContentType,
    RequestMetrics,
)
from service.model_host import ModelHost
from service.request_context import RequestContext
from service.schemas import (
    ErrorBody,
    ModelInfo,
    RankedHypothesis,
    RankedList,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    SentenceScore,
    Status,
    TokenizedSentence,
    TokenizeRequest,
    TokenizeResponse,
    unique_texts,
)
from service.scoring import rank
from service.settings import Settings
from service.ui import install_ui

T = TypeVar("T")


async def get_host(request: Request) -> ModelHost:
    host = request.state.host  # set by the lifespan below
    assert isinstance(host, ModelHost)
    return host


async def authorized(request: Request) -> ModelHost:
    """The host, for a route that wants an API key (when keys are configured). The key is
    checked by the ApiKeys middleware, on every path a route taking this serves, from the
    headers alone: before a request slot is taken or the body read (see build_app)."""
    return await get_host(request)


async def metrics_reader(request: Request) -> ModelHost:
    """The host, for a Prometheus scrape: keyed (by ApiKeys) only with
    ``metrics_require_key``."""
    return await get_host(request)


def _keyed_paths(routers: Sequence[APIRouter]) -> frozenset[str]:
    """The paths of the routes that take ``authorized``: those ApiKeys guards."""
    return frozenset(route.path for router in routers for route in router.routes
                     if isinstance(route, APIRoute)
                     and any(dep.call is authorized for dep in route.dependant.dependencies))


HostDep = Annotated[ModelHost, Depends(get_host)]
AuthorizedDep = Annotated[ModelHost, Depends(authorized)]
MetricsReaderDep = Annotated[ModelHost, Depends(metrics_reader)]


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

# Every /v1 route takes AuthorizedDep, whose key ApiKeys checks. One dependency per route on
# purpose: FastAPI's dependency resolution costs about as much per request as tokenizing a
# sentence, so admission is a plain `with` in the handler rather than a yield dependency.
v1 = APIRouter(prefix="/v1", responses=_REFUSALS)


@v1.post("/score")
async def score(body: ScoreRequest, request: Request, host: AuthorizedDep) -> ScoreResponse:
    """Per-token energies and the sentence score (-sum of energies) of each sentence."""
    check_count(len(body.sentences), host.max_sentences, "sentences")
    with host.admitted():
        encoded = await host.encode(body.sentences, body.truncate)
        for i, e in enumerate(encoded):
            if not e.num_tokens:  # e.g. only zero-width or combining characters
                raise InvalidInput(f"sentences[{i}] has no tokens once normalised; /v1/score "
                                   "needs at least one")
        results = await unless_client_leaves(request, host.score(encoded))
    return ScoreResponse(model=host.model_name, results=[SentenceScore.of(s) for s in results])


@v1.post("/rerank", response_model_exclude_none=True)
async def rerank(body: RerankRequest, request: Request,
                 host: AuthorizedDep) -> RerankResponse:
    """Each n-best list sorted by base_score + lm_weight * score + length_bonus * num_tokens."""
    lists = body.all_lists()
    check_count(sum(len(lst.hypotheses) for lst in lists), host.max_hypotheses,
                "hypotheses")
    texts = unique_texts(lists)
    with host.admitted():
        encoded = await host.encode(texts, body.truncate, lambda i: body.where(texts[i]))
        scores = dict(zip(texts, await unless_client_leaves(request, host.score(encoded))))
    weights = host.weights(body.lm_weight, body.length_bonus, body.rank_prior)
    ranked = [RankedList(id=lst.id, hypotheses=[RankedHypothesis.of(r) for r in
                                                rank(lst.hypotheses, scores, weights)])
              for lst in lists]
    return RerankResponse(
        model=host.model_name, lm_weight=weights.lm_weight,
        length_bonus=weights.length_bonus, rank_prior=weights.rank_prior,
        hypotheses=ranked[0].hypotheses if body.lists is None else None,
        lists=ranked if body.lists is not None else None)


@v1.post("/tokenize")
async def tokenize(body: TokenizeRequest, host: AuthorizedDep) -> TokenizeResponse:
    """The tokens the model would score, with ids and character offsets; no model run."""
    check_count(len(body.sentences), host.max_sentences, "sentences")
    with host.admitted():
        encoded = await host.encode(body.sentences, body.truncate)
    results = [TokenizedSentence(tokens=e.tokens, ids=e.ids[e.scored].tolist(), offsets=e.offsets,
                                 num_tokens=e.num_tokens, truncated=e.truncated) for e in encoded]
    return TokenizeResponse(model=host.model_name, max_tokens=host.max_tokens,
                            results=results)


@v1.get("/model")
async def model(host: AuthorizedDep) -> ModelInfo:
    """The manifest (without file names), the variant and execution provider in use."""
    return host.info()


probes = APIRouter()


_PROBE_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"model": Status, "description": "Alive or ready"},
    503: {"model": ErrorBody, "description": "Not alive or not ready; the message says why"}}


@probes.get("/healthz", responses=_PROBE_ANSWERS)
async def healthz(host: HostDep) -> Response:
    """Liveness: the process answers and its batcher has not died."""
    if not host.alive:
        return JSONResponse(error_body("not_alive", f"the service is {host.state}"), 503)
    return JSONResponse(Status(status="ok").model_dump())


@probes.get("/readyz", responses=_PROBE_ANSWERS)
async def readyz(host: HostDep) -> Response:
    """Readiness: loaded, warmed up, not draining, engine not failing. Not counted as a
    rejection when 503."""
    if not await host.readiness():
        return JSONResponse(error_body(NotReady.type, f"the service is {host.state}"), 503)
    return JSONResponse(Status(status="ready").model_dump())


@probes.get("/metrics", response_class=PlainTextResponse, responses={401: {
    "description": "Missing or unknown API key (with metrics_require_key)",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}})
async def metrics(host: MetricsReaderDep) -> Response:
    """Prometheus text format."""
    return Response(host.metrics.render(), media_type=CONTENT_TYPE)


def build_app(host: ModelHost) -> FastAPI:
    """The app around an existing (not yet started) host; server.py keeps the host to
    drain it on SIGTERM."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        try:
            await host.start()  # an ArtifactError here fails start-up, as it should
            yield {"host": host}
        finally:
            await host.close()

    app = FastAPI(title="Electric scoring service", version="1",
                  summary="Per-token energies, sentence scores and n-best re-ranking with an "
                          "Electric energy model (Clark et al. 2020).",
                  docs_url=None, redoc_url=None,  # served offline by service/docs_ui.py
                  # No trailing-slash redirect: its Location would repeat the client's Host.
                  redirect_slashes=False, lifespan=lifespan)
    settings = host.settings
    install_error_handlers(app, host.metrics.reject)
    app.include_router(v1)
    app.include_router(probes)
    from service.compat import compat  # here: compat.py uses this module's dependencies

    app.include_router(compat)
    install_docs(app, (v1, probes, compat),
                 keyed_by=(authorized, metrics_reader) if settings.metrics_require_key
                 else (authorized,), keys_required=bool(settings.api_keys))
    install_ui(app)  # GET / and /ui: the browser page (service/ui.py)
    # Each add_middleware wraps what is already there: the last added runs first.
    app.add_middleware(HeadAsGet)
    app.add_middleware(JsonContentType)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.request_timeout_s, metrics=host.metrics,
                       start_timeout_s=settings.body_start_timeout_s)
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent_requests,
                       metrics=host.metrics, per_peer=settings.max_requests_per_peer)
    if settings.api_keys:
        # Before the limits: a keyless request never takes a slot nor has its body read.
        keyed = _keyed_paths((v1, probes, compat))
        if settings.metrics_require_key:
            keyed |= {"/metrics"}
        app.add_middleware(ApiKeys, keys=settings.api_keys, paths=keyed,
                           metrics=host.metrics)
    if settings.cors_origins:
        # Outside the limits, so that a browser can read their refusals (and Retry-After).
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "X-Request-ID"],
            expose_headers=["Retry-After", "X-Request-ID", "X-Total-Time", "X-Queue-Time",
                            "X-Inference-Time"], max_age=600)
    # Only for clients that ask (Accept-Encoding: gzip) and bodies worth it. Level 1, not
    # Starlette's 9: nearly the same size for a tenth of the time (docs/SERVICE.md, "gzip").
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=1)
    # Outermost but one: every response, refusals included, carries the request id and timing.
    app.add_middleware(RequestContext)
    # Outermost: it also counts and logs what the limits refuse.
    app.add_middleware(RequestMetrics, metrics=host.metrics, access_log=settings.access_log)
    return app


def create_app(settings: Settings | None = None, *, engine: EnergyEngine | None = None) -> FastAPI:
    """A new app serving ``settings.artifact``; ``engine`` replaces its ONNX model (tests)."""
    return build_app(ModelHost(settings or Settings(), engine))

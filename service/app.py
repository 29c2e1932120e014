"""The FastAPI app: routes of the HTTP API (v1) and the probes, the middleware, the lifespan.

``create_app(settings)`` builds an app and loads nothing; the lifespan starts the ModelHost
(artifact, tokenizer, engine, batcher) and closes it. Handlers check, call the host, shape:
limits are on the schemas and settings, admission and scoring in the host
(``ModelHost.infer``), batching in the batcher, maths in scoring. The dependencies are in
service/deps.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute

from service.compat import compat
from service.deps import (
    REFUSALS,
    AuthorizedDep,
    HostDep,
    MetricsReaderDep,
    authorized,
    check_count,
    metrics_reader,
)
from service.disconnect import client_of
from service.docs_ui import install_docs
from service.engine import EnergyEngine
from service.errors import NotReady, error_body
from service.fast_lane import ScoreFastLane, refuse_empty
from service.http_errors import install_error_handlers
from service.metrics import CONTENT_TYPE
from service.middleware import (
    ApiKeys,
    BodyLimit,
    ConcurrencyLimit,
    GzipWhenAsked,
    HeadAsGet,
    JsonContentType,
    RequestMetrics,
)
from service.model_host import ModelHost
from service.proxies import TrustedProxies, parse_networks
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


def _keyed_paths(routers: Sequence[APIRouter]) -> frozenset[str]:
    """The paths of the routes that take ``authorized``: those ApiKeys guards."""
    return frozenset(route.path for router in routers for route in router.routes
                     if isinstance(route, APIRoute)
                     and any(dep.call is authorized for dep in route.dependant.dependencies))


v1 = APIRouter(prefix="/v1", responses=REFUSALS)


@v1.post("/score")
async def score(body: ScoreRequest, request: Request, host: AuthorizedDep) -> ScoreResponse:
    """Per-token energies and the sentence score (-sum of energies) of each sentence."""
    check_count(len(body.sentences), host.max_sentences, "sentences")
    results = await host.infer(body.sentences, body.truncate,
                               client_of(request.scope, request.receive), check=refuse_empty)
    return ScoreResponse(model=host.model_name, results=[SentenceScore.of(s) for s in results])


@v1.post("/rerank", response_model_exclude_none=True)
async def rerank(body: RerankRequest, request: Request,
                 host: AuthorizedDep) -> RerankResponse:
    """Each n-best list sorted by base_score + lm_weight * score + length_bonus * num_tokens."""
    lists = body.all_lists()
    check_count(sum(len(lst.hypotheses) for lst in lists), host.max_hypotheses,
                "hypotheses")
    texts = unique_texts(lists)
    scored = await host.infer(texts, body.truncate, client_of(request.scope, request.receive),
                              lambda i: body.where(texts[i]))
    scores = dict(zip(texts, scored))
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
                  redirect_slashes=False, lifespan=lifespan,
                  # FastAPI's own OpenTelemetry asks the global providers on every request;
                  # the service's metrics are Prometheus's (service/metrics.py).
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    settings = host.settings
    install_error_handlers(app, host.metrics.reject)
    app.include_router(v1)
    app.include_router(probes)
    app.include_router(compat)
    install_docs(app, (v1, probes, compat),
                 keyed_by=(authorized, metrics_reader) if settings.metrics_require_key
                 else (authorized,), keys_required=bool(settings.api_keys))
    install_ui(app)  # GET / and /ui: the browser page (service/ui.py)
    # Each add_middleware wraps what is already there: the last added runs first.
    app.add_middleware(HeadAsGet)
    app.add_middleware(JsonContentType)
    # Inside the limits; what it does not answer goes on to the two above and the router.
    app.add_middleware(ScoreFastLane, host=host)
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
    app.add_middleware(GzipWhenAsked, minimum_size=1024, compresslevel=1)
    # Outermost but one: every response, refusals included, carries the request id and timing.
    app.add_middleware(RequestContext)
    # Outermost: it also counts and logs what the limits refuse.
    app.add_middleware(RequestMetrics, metrics=host.metrics, access_log=settings.access_log)
    if settings.trusted_proxies:
        # Before everything that reads the client's address: the limits and the access log.
        app.add_middleware(TrustedProxies, trusted=parse_networks(settings.trusted_proxies))
    return app


def create_app(settings: Settings | None = None, *, engine: EnergyEngine | None = None) -> FastAPI:
    """A new app serving ``settings.artifact``; ``engine`` replaces its ONNX model (tests)."""
    return build_app(ModelHost(settings or Settings(), engine))

"""The routes' typed dependencies and the checks every route shares.

Routers (service/app.py's v1 and probes, service/compat.py) import these, never the app, so the
app can import every router without a circle.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from service.errors import PayloadTooLarge
from service.model_host import ModelHost
from service.schemas import ErrorBody


async def get_host(request: Request) -> ModelHost:
    host = request.state.host  # set by the app's lifespan
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


HostDep = Annotated[ModelHost, Depends(get_host)]
AuthorizedDep = Annotated[ModelHost, Depends(authorized)]
MetricsReaderDep = Annotated[ModelHost, Depends(metrics_reader)]


def check_count(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise PayloadTooLarge(f"the request has {count} {what}; the limit is {limit}")


# The refusals a scoring route may answer, for the OpenAPI document.
REFUSALS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in (
        (401, "Missing or unknown API key"), (408, "Body not received in time"),
        (413, "Body, sentence or hypothesis count too large"),
        (422, "Invalid input"), (429, "Queue full; retry after Retry-After seconds"),
        (500, "Inference failed"), (503, "Not ready, draining or engine failing"),
        (504, "Deadline passed"))}

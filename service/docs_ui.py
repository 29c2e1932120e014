"""The API's documentation pages, offline: /docs (Swagger UI), /redoc, and what the OpenAPI
document says about API keys.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so behind a firewall /docs is blank.
Here the assets are vendored in service/static/docs (versions, checksums and licences in its
VENDORED.md) and served by the app, and the pages start them from a script file rather than
an inline one, so that they carry a strict Content-Security-Policy (script-src 'self').

The OpenAPI document declares both ways to send a key (``Authorization: Bearer`` and
``X-API-Key``) on every operation that checks one. Whether a key is required is the
deployment's choice (``ELECTRIC_API_KEYS``): without keys each such operation also lists the
empty requirement ``{}``, which in OpenAPI means "or no key at all".
"""

from __future__ import annotations

import html
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.dependencies.models import Dependant
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.routing import APIRoute

ASSETS = Path(__file__).parent / "static" / "docs"
ASSET_PATH = "/docs/assets"

# The files a page may ask for, and their types; anything else in the folder (licences) is not
# served, and no name from the URL reaches the file system unchecked.
MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-init.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
}

# Both UIs set element styles from script (style-src 'unsafe-inline'), draw icons as data:
# images, and "Try it out" calls the API itself (connect-src 'self'); ReDoc's search runs in a
# worker made from a blob. Nothing else: no inline or remote script, no remote anything.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
       "worker-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

_PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                 "Referrer-Policy": "no-referrer"}
# Assets change only with the package; an hour keeps reloads cheap without pinning old files.
_ASSET_HEADERS = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}

SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - Swagger UI</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
<link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui" data-openapi-url="{openapi}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""

# ReDoc's standalone bundle starts itself on a <redoc spec-url> element: no script of ours.
REDOC_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} - ReDoc</title>
<link rel="icon" type="image/png" href="{assets}/favicon-32x32.png">
</head>
<body>
<redoc spec-url="{openapi}"></redoc>
<script src="{assets}/redoc.standalone.js"></script>
</body>
</html>
"""

BEARER, API_KEY = "bearer", "apiKey"
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    BEARER: {"type": "http", "scheme": "bearer",
             "description": "Authorization: Bearer <key>, when the deployment sets "
                            "ELECTRIC_API_KEYS."},
    API_KEY: {"type": "apiKey", "in": "header", "name": "X-API-Key",
              "description": "The same key in an X-API-Key header."},
}


def _page(request: Request, template: str) -> HTMLResponse:
    app = request.app
    assert isinstance(app, FastAPI)
    root = request.scope.get("root_path", "").rstrip("/")
    body = template.format(title=html.escape(app.title), assets=html.escape(root + ASSET_PATH),
                           openapi=html.escape(root + (app.openapi_url or "/openapi.json")))
    return HTMLResponse(body, headers=_PAGE_HEADERS)


docs = APIRouter(include_in_schema=False)


@docs.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return _page(request, SWAGGER_PAGE)


@docs.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return _page(request, REDOC_PAGE)


@docs.get(ASSET_PATH + "/{name}")
async def asset(name: str) -> FileResponse:
    media_type = MEDIA_TYPES.get(name)
    if media_type is None:  # answered in the one error shape by service/errors.py
        raise HTTPException(404, f"no documentation asset {name[:80]!r}")
    return FileResponse(ASSETS / name, media_type=media_type, headers=_ASSET_HEADERS)


def _calls(dependant: Dependant) -> set[Callable[..., Any]]:
    """Every dependency a route resolves, sub-dependencies included."""
    found: set[Callable[..., Any]] = set()
    for dep in dependant.dependencies:
        if dep.call is not None:
            found.add(dep.call)
        found |= _calls(dep)
    return found


def add_security(schema: dict[str, Any], routers: Sequence[APIRouter],
                 keyed_by: Collection[Callable[..., Any]], keys_required: bool) -> None:
    """Declare the key schemes and put them on the operations of the routes (of ``routers``)
    that depend on one of ``keyed_by``, the dependencies that check a key."""
    schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    requirement: list[dict[str, list[str]]] = [{BEARER: []}, {API_KEY: []}]
    if not keys_required:
        requirement.append({})
    for route in (r for router in routers for r in router.routes):
        if not isinstance(route, APIRoute) or not _calls(route.dependant) & set(keyed_by):
            continue
        for method in route.methods or ():
            operation = schema.get("paths", {}).get(route.path_format, {}).get(method.lower())
            if operation is not None:
                operation["security"] = requirement


def install_docs(app: FastAPI, routers: Sequence[APIRouter],
                 keyed_by: Collection[Callable[..., Any]], keys_required: bool) -> None:
    """Serve /docs, /redoc and their assets, and declare the key schemes in /openapi.json on
    the routes of ``routers`` (those the app includes as they are, without a prefix) that
    check a key. The app must be built with ``docs_url=None, redoc_url=None``."""
    app.include_router(docs)
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()  # FastAPI caches it in app.openapi_schema
            add_security(schema, routers, keyed_by, keys_required)
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]

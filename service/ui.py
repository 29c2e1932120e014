"""The browser page: ``GET /`` (a list of links), ``GET /ui`` and its assets under /ui/static.

The page is plain HTML, CSS and JavaScript modules shipped in ``service/static/ui`` (package
data), so it works offline and needs no build step; it talks to the same /v1 API every other
client uses. Every response here carries a strict Content-Security-Policy: scripts, styles and
connections from this origin only, no inline code, no framing, no form posts, so that text a
user pastes (or a deep link hands them) can never run as code on the page. Assets are
revalidated with an ETag (``Cache-Control: no-cache``): file names carry no hash, so a browser
must ask after an upgrade, and a 304 keeps the asking cheap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from service.errors import error_body

STATIC = Path(__file__).resolve().parent / "static" / "ui"
ASSET_PREFIX = "/ui/static"

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# What the folder may serve, by suffix; any other file in it is not an asset.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
}

HOME_PAGE = "home.html"
UI_PAGE = "index.html"


@dataclass(frozen=True)
class Asset:
    body: bytes
    media_type: str
    etag: str
    """A strong validator: the quoted start of the body's sha256."""

    @classmethod
    def read(cls, path: Path) -> Asset:
        body = path.read_bytes()
        return cls(body, MEDIA_TYPES[path.suffix], f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def load_assets(folder: Path = STATIC) -> dict[str, Asset]:
    """Every servable file directly in ``folder``, by name; read once, when the app is built
    (a few tens of KB), so that a request never touches the disk."""
    return {path.name: Asset.read(path) for path in sorted(folder.iterdir())
            if path.is_file() and path.suffix in MEDIA_TYPES}


def _matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    given = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in given or etag in given


def serve(request: Request, asset: Asset) -> Response:
    """The asset, or 304 when the browser's copy is current; security headers on both."""
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    if _matches(request.headers.get("if-none-match"), asset.etag):
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


def ui_router(assets: dict[str, Asset]) -> APIRouter:
    """The routes over ``assets``; both pages must be among them."""
    for page in (HOME_PAGE, UI_PAGE):
        if page not in assets:
            raise FileNotFoundError(f"{page} is missing from the UI assets ({STATIC})")
    # Outside the OpenAPI document: HTML pages are not part of the API clients are built from.
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def home(request: Request) -> Response:
        return serve(request, assets[HOME_PAGE])

    @router.get("/ui")
    async def ui(request: Request) -> Response:
        return serve(request, assets[UI_PAGE])

    @router.get(ASSET_PREFIX + "/{name}")
    async def asset(request: Request, name: str) -> Response:
        found = assets.get(name)
        if found is None:
            return JSONResponse(
                error_body("not_found", f"no UI asset named {name[:60]!r}; the page's assets "
                                        f"are {', '.join(sorted(assets))}"),
                status_code=404, headers=SECURITY_HEADERS)
        return serve(request, found)

    return router


def install_ui(app: FastAPI) -> None:
    """Serve the page and its assets from ``app``."""
    app.include_router(ui_router(load_assets()))

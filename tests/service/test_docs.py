"""/docs and /redoc offline under a strict CSP; the OpenAPI document's key schemes and examples."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import FakeEngine, error_of, running_app, serving

from service.docs_ui import ASSETS, MEDIA_TYPES
from service.model_host import ModelHost
from service.settings import Settings


class _Refs(HTMLParser):
    """Every URL a page loads (src, href) and the text of its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href", "spec-url",
                                                  "data-openapi-url") and v]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(data)


def refs_of(page: str) -> _Refs:
    parser = _Refs()
    parser.feed(page)
    return parser


async def get_all(client: httpx.AsyncClient, paths: list[str]) -> list[httpx.Response]:
    return [await client.get(p) for p in paths]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(fake_settings: Callable[..., Settings],
                                           page: str) -> None:
    async def scenario() -> None:
        async with serving(ModelHost(fake_settings(), FakeEngine())) as client:
            response = await client.get(page)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/html")
            csp = response.headers["content-security-policy"]
            assert "script-src 'self';" in csp and "default-src 'none'" in csp
            assert not re.search(r"https?://", response.text), "a CDN or other remote URL"
            refs = refs_of(response.text)
            assert refs.inline == [], "inline script: the CSP would block it"
            assert "/openapi.json" in refs.urls
            assets = [u for u in refs.urls if u != "/openapi.json"]
            assert assets and all(u.startswith("/docs/assets/") for u in assets), assets
            for url, got in zip(assets, await get_all(client, assets)):
                name = url.rsplit("/", 1)[1]
                assert got.status_code == 200, url
                assert got.headers["content-type"] == MEDIA_TYPES[name]
                assert got.headers["x-content-type-options"] == "nosniff"
                assert got.content == (ASSETS / name).read_bytes()

    asyncio.run(scenario())


def test_every_served_asset_exists_and_nothing_else_is_served(
        fake_settings: Callable[..., Settings]) -> None:
    assert all((ASSETS / name).is_file() for name in MEDIA_TYPES)
    assert (ASSETS / "VENDORED.md").is_file()

    async def scenario() -> None:
        async with serving(ModelHost(fake_settings(), FakeEngine())) as client:
            for path in ("/docs/assets/LICENSE.redoc", "/docs/assets/VENDORED.md",
                         "/docs/assets/..%2F..%2Fapp.py", "/docs/assets/nope.js"):
                assert error_of(await client.get(path)) == (404, "not_found"), path

    asyncio.run(scenario())


def test_vendored_files_match_their_recorded_checksums() -> None:
    """VENDORED.md lists sha256 per file; a silently replaced bundle fails here."""
    recorded = dict(re.findall(r"\| `([^`]+)` \| [^|]+ \| `([0-9a-f]{64})` \|",
                               (ASSETS / "VENDORED.md").read_text()))
    vendored = {n for n in MEDIA_TYPES if not n.endswith("-init.js")}
    assert vendored <= set(recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest, name


def test_pages_follow_the_root_path(fake_settings: Callable[..., Settings]) -> None:
    """Behind a proxy that serves the app under a prefix, the asset URLs carry it."""
    async def scenario() -> str:
        async with running_app(ModelHost(fake_settings(), FakeEngine())) as app:
            transport = httpx.ASGITransport(app=app, root_path="/electric")
            async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
                return (await client.get("/docs")).text

    urls = refs_of(asyncio.run(scenario())).urls
    assert "/electric/openapi.json" in urls
    assert all(u.startswith("/electric/") for u in urls), urls


def openapi(settings: Settings) -> dict[str, Any]:
    async def scenario() -> dict[str, Any]:
        async with serving(ModelHost(settings, FakeEngine())) as client:
            document: dict[str, Any] = (await client.get("/openapi.json")).json()
            return document

    return asyncio.run(scenario())


KEYED = {("/v1/score", "post"), ("/v1/rerank", "post"), ("/v1/tokenize", "post"),
         ("/v1/model", "get"), ("/rerank", "post")}


def security_of(document: dict[str, Any]) -> dict[tuple[str, str], Any]:
    return {(path, method): op.get("security") for path, ops in document["paths"].items()
            for method, op in ops.items()}


def test_openapi_declares_the_key_schemes(fake_settings: Callable[..., Settings]) -> None:
    both = [{"bearer": []}, {"apiKey": []}]
    open_ = openapi(fake_settings())
    schemes = open_["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header",
                                 "name": "X-API-Key"}
    # Without keys the schemes are declared and optional ({} = no key needed).
    security = security_of(open_)
    assert {k for k, v in security.items() if v} == KEYED
    assert all(security[k] == [*both, {}] for k in KEYED)
    keyed = security_of(openapi(fake_settings(api_keys=["k"])))
    assert {k for k, v in keyed.items() if v} == KEYED and keyed[("/v1/score", "post")] == both
    scraped = security_of(openapi(fake_settings(api_keys=["k"], metrics_require_key=True)))
    assert scraped[("/metrics", "get")] == both and scraped[("/healthz", "get")] is None


# What each example is sent to, by request schema name.
EXAMPLE_ROUTES = {"ScoreRequest": "/v1/score", "RerankRequest": "/v1/rerank",
                  "TokenizeRequest": "/v1/tokenize", "TeiRerankRequest": "/rerank",
                  "CohereRerankRequest": "/rerank"}


def test_request_examples_are_documented_and_served(
        fake_settings: Callable[..., Settings]) -> None:
    schemas = openapi(fake_settings())["components"]["schemas"]
    examples = {name: schemas[name].get("examples") for name in EXAMPLE_ROUTES}
    assert all(examples.values()), examples

    async def scenario() -> None:
        async with serving(ModelHost(fake_settings(), FakeEngine())) as client:
            for name, route in EXAMPLE_ROUTES.items():
                for example in examples[name] or []:
                    response = await client.post(route, json=example)
                    assert response.status_code == 200, (name, example, response.text)

    asyncio.run(scenario())


# ReDoc 2.5.4 always draws a "by Redocly" logo from its CDN; the CSP blocks it (one console
# message, no request leaves the browser) and ReDoc hides the broken image.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


def test_the_docs_pages_render_offline_in_a_browser(tiny_artifact: Path, tmp_path: Path) -> None:
    """Swagger UI and ReDoc draw the API in headless Chromium with the CSP in force, and no
    request to anywhere but the service completes."""
    sync_api = pytest.importorskip("playwright.sync_api")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    from live_server import live_server

    with live_server(tiny_artifact) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            remote: list[str] = []
            local = (url, "blob:" + url)  # ReDoc's search worker comes from a blob
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfinished",
                    lambda r: None if r.url.startswith(local) else remote.append(r.url))
            page.goto(url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            paths = {t.strip() for t in page.locator(".opblock-summary-path").all_inner_texts()}
            assert {"/v1/score", "/rerank", "/v1/rerank"} <= paths, paths
            assert page.locator(".btn.authorize").count() == 1  # the key schemes
            # "Try it out" calls the service from the page: connect-src 'self' lets it.
            page.locator("#operations-default-model_v1_model_get .opblock-summary").click()
            page.get_by_role("button", name="Try it out").click()
            page.get_by_role("button", name="Execute").click()
            status = page.locator(".live-responses-table tr.response .response-col_status").first
            status.wait_for(timeout=20_000)
            assert status.inner_text().strip() == "200"
            page.screenshot(path=str(tmp_path / "docs.png"))
            page.goto(url + "/redoc")
            page.wait_for_selector("h1", timeout=20_000)
            assert "Electric scoring service" in page.locator("h1").first.inner_text()
            # Each operation's panel shows its path: the document was read, not just the shell.
            assert page.get_by_text("/v1/score", exact=True).count() >= 1
            assert page.get_by_text("/rerank", exact=True).count() >= 1
            unexpected = [m for m in problems
                          if not (REDOC_LOGO in m and "Content Security Policy" in m)]
            assert unexpected == [] and remote == [], (problems, remote)
        finally:
            browser.close()

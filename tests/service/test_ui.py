"""The /ui page over HTTP (in process, through the lifespan, fake engine): what is served, with
which headers, and that the page's files hold nothing the CSP would refuse. The page's
behaviour in a real browser is test_ui_browser.py's."""

from __future__ import annotations

import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from harness import FakeEngine, error_of, serving

from service.model_host import ModelHost
from service.settings import Settings
from service.ui import ASSET_PREFIX, CONTENT_SECURITY_POLICY, MEDIA_TYPES, STATIC, load_assets

Make = Callable[..., Settings]


class Markup(HTMLParser):
    """What a page refers to, and anything inline the CSP would block."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.assets: list[str] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if "style" in values or any(name.startswith("on") for name in values):
            self.inline.append(f"<{tag}> with {sorted(values)}")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script":
            self._in_script = True
            assert values.get("src"), "a script without src"
            self.assets.append(str(values["src"]))
        if tag == "link" and values.get("rel") == "stylesheet":
            self.assets.append(str(values["href"]))
        if tag == "a" and values.get("href"):
            self.links.append(str(values["href"]))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"script text {data.strip()[:40]!r}")


def markup(html: str) -> Markup:
    parser = Markup()
    parser.feed(html)
    return parser


def check_security_headers(response: httpx.Response) -> None:
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def run(make: Make, check: Callable[[httpx.AsyncClient], Any], **overrides: Any) -> None:
    import asyncio

    async def scenario() -> None:
        async with serving(ModelHost(make(**overrides), FakeEngine())) as client:
            await check(client)

    asyncio.run(scenario())


def test_home_links_the_page_docs_model_and_metrics(fake_settings: Make) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        response = await client.get("/")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        check_security_headers(response)
        page = markup(response.text)
        assert page.links == ["ui", "docs", "v1/model", "metrics"]
        assert not page.inline
        # Every link leads somewhere (relative to /, as a browser resolves them).
        for link in page.links:
            assert (await client.get("/" + link)).status_code == 200, link

    run(fake_settings, check)


def test_ui_page_has_a_strict_csp_and_nothing_inline(fake_settings: Make) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        response = await client.get("/ui")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        check_security_headers(response)
        csp = dict(part.strip().split(" ", 1) for part in CONTENT_SECURITY_POLICY.split(";"))
        assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'"
        assert csp["frame-ancestors"] == "'none'" and csp["form-action"] == "'none'"
        page = markup(response.text)
        assert not page.inline, page.inline
        assert page.assets == ["ui/static/ui.css", "ui/static/ui.js"]
        for asset in page.assets:  # relative to /ui, i.e. under /ui/static
            got = await client.get("/" + asset)
            assert got.status_code == 200, asset
            check_security_headers(got)

    run(fake_settings, check)


def test_every_asset_has_its_type_and_an_etag_that_revalidates(fake_settings: Make) -> None:
    assets = load_assets()
    assert {"index.html", "home.html", "ui.js", "ui.css", "nbest.js", "pytext.js", "wer.js"} <= set(assets)

    async def check(client: httpx.AsyncClient) -> None:
        for name, asset in assets.items():
            response = await client.get(f"{ASSET_PREFIX}/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"] == MEDIA_TYPES["." + name.rsplit(".")[-1]]
            assert response.content == (STATIC / name).read_bytes()
            etag = response.headers["etag"]
            assert etag == asset.etag and response.headers["cache-control"] == "no-cache"
            check_security_headers(response)
            again = await client.get(f"{ASSET_PREFIX}/{name}",
                                     headers={"If-None-Match": f'W/"other", {etag}'})
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == etag
            check_security_headers(again)
            stale = await client.get(f"{ASSET_PREFIX}/{name}",
                                     headers={"If-None-Match": '"not-it"'})
            assert stale.status_code == 200 and stale.content == response.content

    run(fake_settings, check)


@pytest.mark.parametrize("path", [
    f"{ASSET_PREFIX}/missing.js",
    f"{ASSET_PREFIX}/..%2Fui.py",
    f"{ASSET_PREFIX}/%2e%2e%2f%2e%2e%2fsettings.py",
    f"{ASSET_PREFIX}/",
])
def test_unknown_assets_are_404_in_the_error_shape(fake_settings: Make, path: str) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        response = await client.get(path)
        assert error_of(response) == (404, "not_found")
        assert "import" not in response.text  # never a Python file's content

    run(fake_settings, check)


def test_the_page_is_open_when_the_api_wants_a_key(fake_settings: Make) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        for path in ("/", "/ui", f"{ASSET_PREFIX}/ui.js"):
            assert (await client.get(path)).status_code == 200, path
        # The page itself holds nothing secret; what it shows comes from /v1, which is keyed.
        assert error_of(await client.get("/v1/model")) == (401, "unauthorized")
        keyed = await client.get("/v1/model", headers={"Authorization": "Bearer s3cret"})
        assert keyed.status_code == 200

    run(fake_settings, check, api_keys=["s3cret"])


def test_pages_stay_out_of_the_openapi_document(fake_settings: Make) -> None:
    async def check(client: httpx.AsyncClient) -> None:
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert not {"/", "/ui", f"{ASSET_PREFIX}/{{name}}"} & set(paths)
        assert "/v1/score" in paths

    run(fake_settings, check)


IMPORT = re.compile(r'^import .* from "\./([\w.-]+)";$', re.MULTILINE)


def test_scripts_import_only_served_modules_and_build_no_html_from_text() -> None:
    assets = load_assets()
    scripts = {name: asset.body.decode("utf-8") for name, asset in assets.items()
               if name.endswith(".js")}
    for name, source in scripts.items():
        for imported in IMPORT.findall(source):
            assert imported in scripts, f"{name} imports {imported}, which is not served"
        # Text from the user or the service reaches the page as text nodes only.
        for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                      "eval(", "new Function", "setAttribute(\"style\""):
            assert risky not in source, f"{name} uses {risky}"
    # Offline: nothing on the page comes from another host.
    for name, asset in assets.items():
        text = asset.body.decode("utf-8")
        assert "http://" not in text and "https://" not in text and "url(" not in text, name

"""Who gets in, what leaks out: API keys, /metrics protection, CORS, access logs without
secrets or bodies, internals kept from clients, and limits enforced before a request is read
whole (head 431, body 413, stalled body 408, too many at once 429).
"""

from __future__ import annotations

import asyncio
import json
import logging
import select
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import (
    SERVE_GATED,
    FakeEngine,
    error_of,
    eventually,
    free_port,
    running_app,
    server_env,
    serving,
)
from live_server import server_process

from service.model_host import ModelHost
from service.settings import Settings

MakeSettings = Callable[..., Settings]
KEY = "k-0123456789abcdef"
BODY = {"sentences": ["a"]}


def test_api_keys_guard_v1_but_not_probes(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        settings = fake_settings(api_keys=f"{KEY},second-key")
        async with serving(ModelHost(settings, FakeEngine())) as client:
            for path, payload in (("/v1/score", BODY), ("/v1/tokenize", BODY),
                                  ("/v1/rerank", {"hypotheses": ["a"]})):
                missing = await client.post(path, json=payload)
                assert error_of(missing) == (401, "unauthorized")
                assert missing.headers["www-authenticate"] == "Bearer"
            assert error_of(await client.get("/v1/model")) == (401, "unauthorized")
            for headers in ({"x-api-key": "k3"}, {"x-api-key": KEY[:-1] + "0"},
                            {"x-api-key": KEY + "0"}, {"authorization": f"Basic {KEY}"},
                            {"authorization": "Bearer"}, {"authorization": f"Bearer {KEY}x"}):
                wrong = await client.post("/v1/score", json=BODY, headers=headers)
                assert error_of(wrong) == (401, "unauthorized"), headers
                assert wrong.headers["www-authenticate"] == "Bearer"
                assert KEY[:8] not in wrong.text, "a refusal never echoes what was sent"
            for headers in ({"authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"},
                            {"authorization": "Bearer second-key"}, {"x-api-key": KEY}):
                ok = await client.post("/v1/score", json=BODY, headers=headers)
                assert ok.status_code == 200, headers
            assert (await client.get("/v1/model", headers={"x-api-key": KEY})).status_code == 200
            for probe in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                assert (await client.get(probe)).status_code == 200, probe

    asyncio.run(scenario())


def test_metrics_can_require_a_key(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        settings = fake_settings(api_keys=KEY, metrics_require_key=True)
        async with serving(ModelHost(settings, FakeEngine())) as client:
            assert error_of(await client.get("/metrics")) == (401, "unauthorized")
            scrape = await client.get("/metrics", headers={"authorization": f"Bearer {KEY}"})
            assert scrape.status_code == 200 and "electric_requests_total" in scrape.text
            assert (await client.get("/readyz")).status_code == 200, "probes stay open"

    asyncio.run(scenario())


def test_cors_is_off_by_default(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        async with serving(ModelHost(fake_settings(), FakeEngine())) as client:
            origin = {"origin": "https://elsewhere.example"}
            response = await client.post("/v1/score", json=BODY, headers=origin)
            assert response.status_code == 200
            assert "access-control-allow-origin" not in response.headers
            preflight = await client.options("/v1/score", headers={
                **origin, "access-control-request-method": "POST"})
            assert "access-control-allow-origin" not in preflight.headers

    asyncio.run(scenario())


def test_cors_admits_only_the_configured_origins(fake_settings: MakeSettings) -> None:
    app_origin = "https://app.example"

    async def scenario() -> None:
        settings = fake_settings(cors_origins=f"{app_origin}, https://other.example",
                                 max_body_bytes=1024)
        async with serving(ModelHost(settings, FakeEngine())) as client:
            preflight = await client.options("/v1/score", headers={
                "origin": app_origin, "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type"})
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == app_origin
            ok = await client.post("/v1/score", json=BODY, headers={"origin": app_origin})
            assert ok.headers["access-control-allow-origin"] == app_origin
            # A refusal from the limits is readable by the page too.
            big = await client.post("/v1/score", json={"sentences": ["a" * 2000]},
                                    headers={"origin": app_origin})
            assert big.status_code == 413
            assert big.headers["access-control-allow-origin"] == app_origin
            stranger = await client.options("/v1/score", headers={
                "origin": "https://evil.example", "access-control-request-method": "POST"})
            assert "access-control-allow-origin" not in stranger.headers
            other = await client.post("/v1/score", json=BODY,
                                      headers={"origin": "https://evil.example"})
            assert "access-control-allow-origin" not in other.headers

    asyncio.run(scenario())


def test_access_log_is_json_lines_without_bodies_or_secrets(
        fake_settings: MakeSettings, caplog: pytest.LogCaptureFixture) -> None:
    private = "my private sentence"

    async def scenario() -> None:
        settings = fake_settings(api_keys=KEY, access_log=True)
        async with serving(ModelHost(settings, FakeEngine())) as client:
            auth = {"authorization": f"Bearer {KEY}"}
            assert (await client.post("/v1/score?token=query-secret",
                                      json={"sentences": [private]},
                                      headers=auth)).status_code == 200
            wrong = await client.post("/v1/score", json=BODY,
                                      headers={"authorization": "Bearer wrong-guess"})
            assert wrong.status_code == 401
            assert (await client.post("/v1/score", content=b"{bad",
                                      headers=auth)).status_code == 422
            assert (await client.get("/healthz")).status_code == 200

    with caplog.at_level(logging.DEBUG):
        asyncio.run(scenario())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "electric.access"]
    assert [(line["method"], line["path"], line["status"]) for line in lines] == [
        ("POST", "/v1/score", 200), ("POST", "/v1/score", 401), ("POST", "/v1/score", 422),
        ("GET", "/healthz", 200)]
    assert set(lines[0]) == {"time", "client", "method", "path", "status", "duration_ms",
                             "request_bytes", "response_bytes", "request_id"}
    assert lines[0]["request_bytes"] > len(private) and lines[0]["response_bytes"] > 0
    # Everything the server side logged (httpx, the test's client, logs its own URLs).
    everything = "\n".join(r.getMessage() for r in caplog.records
                           if not r.name.startswith(("httpx", "httpcore")))
    for secret in (KEY, "wrong-guess", private, "query-secret", "{bad"):
        assert secret not in everything, secret
    assert "settings:" in everything and "**********" in everything, "settings logged, redacted"


def test_unexpected_errors_keep_internals_from_the_client(
        fake_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("/srv/secret/path exploded")

    async def scenario() -> None:
        host = ModelHost(fake_settings(), FakeEngine())
        monkeypatch.setattr(host, "weights", broken)
        async with running_app(host) as app, httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                base_url="http://service") as client:
            response = await client.post("/v1/rerank", json={"hypotheses": ["a"]})
            assert error_of(response) == (500, "internal")
            assert "secret" not in response.text and "Traceback" not in response.text
            assert (await client.post("/v1/score", json=BODY)).status_code == 200

    asyncio.run(scenario())


async def _raw(app: Any, headers: list[tuple[bytes, bytes]],
               receive: Callable[[], Any]) -> list[dict[str, Any]]:
    """One POST /v1/score straight into the ASGI app; the messages it sent back."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/v1/score", "raw_path": b"",
             "query_string": b"", "root_path": "", "server": ("test", 80),
             "client": ("test", 1), "headers": headers}
    await app(scope, receive, send)
    return sent


def test_an_oversized_body_is_refused_before_it_is_read(fake_settings: MakeSettings) -> None:
    async def never_read() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def scenario() -> None:
        host = ModelHost(fake_settings(max_body_bytes=1024), FakeEngine())
        async with running_app(host) as app:
            sent = await _raw(app, [(b"content-length", b"1000000000")], never_read)
            assert sent[0]["status"] == 413
            assert (b"connection", b"close") in sent[0]["headers"]
            assert b"1000000000 bytes" in sent[1]["body"]

    asyncio.run(scenario())


def test_past_the_concurrency_limit_posts_get_429_before_their_body_is_read(
        fake_settings: MakeSettings) -> None:
    async def never_read() -> dict[str, Any]:
        raise AssertionError("the body was read")

    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        host = ModelHost(fake_settings(max_concurrent_requests=2), engine)
        async with running_app(host) as app, httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
            held = [asyncio.ensure_future(client.post("/v1/score", json=BODY))
                    for _ in range(2)]

            async def both_admitted() -> bool:
                return host.batcher.depth + sum(b for b, _ in engine.shapes) == 2

            await eventually(both_admitted)
            sent = await _raw(app, [(b"content-length", b"30")], never_read)
            assert sent[0]["status"] == 429
            assert (b"retry-after", b"1") in sent[0]["headers"]
            assert b"2 requests are in progress; the limit is 2" in sent[1]["body"]
            assert (await client.get("/readyz")).status_code == 200, "GET is never refused"
            engine.gate.set()
            assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
            assert (await client.post("/v1/score", json=BODY)).status_code == 200

    asyncio.run(scenario())


def test_a_stalled_body_times_out_with_408(fake_settings: MakeSettings) -> None:
    """A client that sends part of its body and stops cannot hold a request slot for ever."""
    async def scenario() -> None:
        parts = [{"type": "http.request", "body": b'{"sentences": ', "more_body": True}]
        stalled = asyncio.Event()

        async def receive() -> dict[str, Any]:
            if parts:
                return parts.pop()
            await stalled.wait()  # never set: the rest never comes
            raise AssertionError("unreachable")

        host = ModelHost(fake_settings(request_timeout_s=0.2), FakeEngine())
        async with running_app(host) as app:
            sent = await _raw(app, [(b"transfer-encoding", b"chunked")], receive)
            assert sent[0]["status"] == 408
            body = json.loads(sent[1]["body"])
            assert body["error"]["type"] == "request_timeout"
            assert "0.2 s" in body["error"]["message"] and "14 bytes" in body["error"]["message"]

    asyncio.run(scenario())


def test_an_oversized_request_head_gets_431_and_the_server_carries_on(
        fake_artifact: Path) -> None:
    """Headers are buffered by the HTTP parser before any middleware sees them; the server
    bounds them itself (MAX_HEAD_BYTES), whether they come in one read or in many."""
    port = free_port()

    def head_bomb(pieces: int, piece: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            for _ in range(pieces):
                conn.sendall(b"X-Junk: " + piece + b"\r\n")
                if select.select([conn], [], [], 0.001)[0]:  # answered: stop sending
                    break
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
            return answer

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for pieces, piece in ((4, b"a" * (1 << 20)), (2000, b"b" * 100)):
                answer = await asyncio.to_thread(head_bomb, pieces, piece)
                status, _, body = answer.partition(b"\r\n\r\n")
                assert status.startswith(b"HTTP/1.1 431"), answer[:200]
                assert json.loads(body)["error"]["type"] == "header_too_large"
            assert (await client.get("/healthz")).status_code == 200
            ok = await client.get("/healthz", headers={"x-big": "c" * 20_000})
            assert ok.status_code == 200, "ordinary large headers still pass"

    with server_process(port, server_env(fake_artifact, port), SERVE_GATED, stdin=True) as proc:
        asyncio.run(scenario())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0

"""X-Request-ID, the TEI timing headers and gzip: on answers, refusals and failures alike."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from harness import FakeEngine, error_of, serving

from service.model_host import ModelHost
from service.request_context import (
    MAX_REQUEST_ID_CHARS,
    RequestContext,
    request_id_of,
)
from service.settings import Settings
from service.timing import current_timing

GENERATED = re.compile(r"[0-9a-f]{32}")


def test_sane_ids_are_kept_and_others_replaced() -> None:
    assert request_id_of(b"req-42.a_b:c/d") == "req-42.a_b:c/d"
    assert request_id_of(b"x" * MAX_REQUEST_ID_CHARS) == "x" * MAX_REQUEST_ID_CHARS
    for bad in (None, b"", b"x" * (MAX_REQUEST_ID_CHARS + 1), b"two words", b"tab\there",
                b"caf\xc3\xa9", b"nul\x00", b"line\nbreak"):
        assert GENERATED.fullmatch(request_id_of(bad)), bad
    assert request_id_of(None) != request_id_of(None)


def test_a_generated_id_is_a_version_4_uuid() -> None:
    for _ in range(200):
        generated = uuid.UUID(request_id_of(None))
        assert generated.version == 4 and generated.variant == uuid.RFC_4122


def test_every_response_carries_a_request_id(fake_settings: Callable[..., Settings]) -> None:
    """200s, the handlers' refusals, the router's 404 and the middleware limits' 413."""
    async def scenario() -> None:
        host = ModelHost(fake_settings(max_body_bytes=1024), FakeEngine())
        async with serving(host) as client:
            sent = {"x-request-id": "client-chosen-1"}
            answers = [
                await client.post("/v1/score", json={"sentences": ["the cat"]}, headers=sent),
                await client.post("/v1/score", json={"sentences": [""]}),
                await client.get("/no/such/path"),
                await client.post("/v1/score", content=b"x" * 2048),
                await client.get("/healthz", headers={"x-request-id": "bad id with spaces"}),
            ]
            assert [a.status_code for a in answers] == [200, 422, 404, 413, 200]
            assert answers[0].headers["x-request-id"] == "client-chosen-1"
            for answer in answers[1:]:
                assert GENERATED.fullmatch(answer.headers["x-request-id"]), answer.headers
            assert error_of(answers[3]) == (413, "payload_too_large")

    asyncio.run(scenario())


def test_a_missing_key_refusal_carries_the_request_id(
        fake_settings: Callable[..., Settings]) -> None:
    async def scenario() -> httpx.Response:
        host = ModelHost(fake_settings(api_keys=["k"]), FakeEngine())
        async with serving(host) as client:
            return await client.post("/v1/score", json={"sentences": ["a"]},
                                     headers={"x-request-id": "keyless"})

    refused = asyncio.run(scenario())
    assert error_of(refused) == (401, "unauthorized")
    assert refused.headers["x-request-id"] == "keyless"


def test_the_access_log_names_the_request_id(fake_settings: Callable[..., Settings],
                                             caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[httpx.Response]:
        host = ModelHost(fake_settings(access_log=True, max_body_bytes=1024), FakeEngine())
        async with serving(host) as client:
            return [await client.post("/v1/score", json={"sentences": ["a cat"]},
                                      headers={"x-request-id": "trace-me"}),
                    await client.post("/v1/score", content=b"x" * 2048)]

    with caplog.at_level(logging.INFO, logger="electric.access"):
        answers = asyncio.run(scenario())
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "electric.access"]
    assert [(line["status"], line["request_id"]) for line in lines] == [
        (a.status_code, a.headers["x-request-id"]) for a in answers]
    assert lines[0]["request_id"] == "trace-me"


def test_total_time_always_and_engine_times_when_the_request_reached_it(
        fake_settings: Callable[..., Settings]) -> None:
    """x-queue-time / x-inference-time come from the batcher filling ``current_timing``
    (service/model_host.py passes it to Batcher.score): this test needs that wiring."""
    async def scenario() -> None:
        host = ModelHost(fake_settings(), FakeEngine(delay_s=0.02))
        async with serving(host) as client:
            probe = await client.get("/healthz")
            scored = await client.post("/v1/score", json={"sentences": ["the cat sat"]})
        assert probe.headers["x-total-time"].isdigit()
        assert "x-queue-time" not in probe.headers and "x-inference-time" not in probe.headers
        total = int(scored.headers["x-total-time"])
        inference = int(scored.headers["x-inference-time"])
        queue = int(scored.headers["x-queue-time"])
        assert inference >= 20 and total >= inference and queue >= 0

    asyncio.run(scenario())


def _run_asgi(app: Any, headers: list[tuple[bytes, bytes]] | None = None
              ) -> list[dict[str, Any]]:
    """Drive ``RequestContext(app)`` with one GET and collect what it sends."""
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers or []}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await RequestContext(app)(scope, receive, send)

    try:
        asyncio.run(run())
    except RuntimeError as exc:
        assert str(exc) == "boom"
    return sent


def _headers(message: dict[str, Any]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in message["headers"]}


def test_timing_headers_come_from_current_timing() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        timing = current_timing.get()
        assert timing is not None
        timing.queue_s += 0.0123
        timing.inference_s += 0.0456
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    start = _headers(_run_asgi(app)[0])
    assert (start["x-queue-time"], start["x-inference-time"]) == ("12", "46")
    assert current_timing.get() is None  # reset after the request


def test_an_unexpected_failure_is_answered_500_with_the_id() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    start, body = _run_asgi(app, [(b"x-request-id", b"failing-one")])
    assert start["status"] == 500 and _headers(start)["x-request-id"] == "failing-one"
    assert json.loads(body["body"])["error"]["type"] == "internal"


def test_gzip_on_request_for_large_bodies_only(fake_settings: Callable[..., Settings]) -> None:
    sentences = [f"the cat {i} sat on the mat" for i in range(200)]

    async def scenario() -> None:
        host = ModelHost(fake_settings(max_body_bytes=1 << 16), FakeEngine())
        async with serving(host) as client:
            # httpx asks for gzip by default; "identity" is the client that does not.
            plain = await client.post("/v1/score", json={"sentences": sentences},
                                      headers={"accept-encoding": "identity"})
            zipped = await client.post("/v1/score", json={"sentences": sentences},
                                       headers={"accept-encoding": "gzip"})
            small = await client.post("/v1/score", json={"sentences": ["a cat"]},
                                      headers={"accept-encoding": "gzip"})
            refused = await client.post("/v1/score", content=b"x" * (1 << 17),
                                        headers={"accept-encoding": "gzip"})
            metrics = await client.get("/metrics", headers={"accept-encoding": "gzip"})
        assert "content-encoding" not in plain.headers
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.json() == plain.json()  # httpx decodes it
        assert zipped.num_bytes_downloaded * 5 < plain.num_bytes_downloaded
        assert zipped.headers["x-request-id"] and zipped.headers["x-total-time"]
        assert "content-encoding" not in small.headers
        assert error_of(refused) == (413, "payload_too_large")
        assert refused.headers["x-request-id"]
        assert metrics.status_code == 200 and "electric_requests_total" in metrics.text
        assert metrics.headers["content-encoding"] == "gzip"  # Prometheus asks for it

    asyncio.run(scenario())


def test_gzip_body_is_standard_gzip(fake_settings: Callable[..., Settings]) -> None:
    """What a client without httpx's decoding gets: a gzip stream of the same JSON."""
    async def scenario() -> tuple[bytes, bytes]:
        host = ModelHost(fake_settings(), FakeEngine())
        async with serving(host) as client:
            body = {"sentences": [f"the dog {i} ran to the house" for i in range(40)]}
            plain = await client.post("/v1/score", json=body,
                                      headers={"accept-encoding": "identity"})
            async with client.stream("POST", "/v1/score", json=body,
                                     headers={"accept-encoding": "gzip"}) as raw:
                assert raw.headers["content-encoding"] == "gzip"
                zipped = b"".join([chunk async for chunk in raw.aiter_raw()])
            return plain.content, zipped

    plain, zipped = asyncio.run(scenario())
    assert json.loads(gzip.decompress(zipped)) == json.loads(plain)

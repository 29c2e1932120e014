"""Refusal paths over HTTP with a fake engine: 429, 504, 503, 500, 401, client gone.

A gated fake engine holds a batch "running" for as long as a test needs, so queue states are
set up by events, not by sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import FakeEngine, error_of, eventually, metric_value, running_app, serving
from tokenizers import Tokenizer

from service.runtime import Runtime
from service.settings import Settings

MakeSettings = Callable[..., Settings]


async def until_running(engine: FakeEngine) -> None:
    assert await asyncio.to_thread(engine.entered.wait, 5), "the engine never started"


def test_scores_follow_the_engine_exactly(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        async with serving(Runtime(fake_settings(), FakeEngine())) as client:
            texts = ["the cat sat", "a dog ran to the old house"]
            ids = [r["ids"] for r in (await client.post(
                "/v1/tokenize", json={"sentences": texts})).json()["results"]]
            results = (await client.post("/v1/score", json={"sentences": texts})).json()["results"]
            for want, got in zip(ids, results):
                assert got["score"] == pytest.approx(FakeEngine.expected_score(want))

    asyncio.run(scenario())


def test_full_queue_is_429_with_retry_after(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        settings = fake_settings(max_queue=4, max_sentences=4, max_hypotheses=4)
        async with serving(Runtime(settings, engine)) as client:
            running = asyncio.ensure_future(client.post("/v1/score", json={"sentences": ["a"]}))
            await until_running(engine)
            queued = asyncio.ensure_future(
                client.post("/v1/score", json={"sentences": ["b", "c", "d"]}))

            async def three_queued() -> bool:
                return "electric_queue_depth 3.0" in (await client.get("/metrics")).text

            await eventually(three_queued)
            refused = await client.post("/v1/score", json={"sentences": ["e", "f"]})
            assert error_of(refused) == (429, "overloaded")
            assert int(refused.headers["retry-after"]) >= 1
            assert "limit of 4" in refused.json()["error"]["message"]
            engine.gate.set()
            assert (await running).status_code == 200 and (await queued).status_code == 200
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_rejections_total", reason="overloaded") == 1

    asyncio.run(scenario())


def test_deadline_in_queue_is_504_and_the_work_is_dropped(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        async with serving(Runtime(fake_settings(request_timeout_s=0.2), engine)) as client:
            running = asyncio.ensure_future(client.post("/v1/score", json={"sentences": ["a"]}))
            await until_running(engine)
            late = await client.post("/v1/score", json={"sentences": ["the cat", "the dog"]})
            assert error_of(late) == (504, "deadline_exceeded")
            assert "0.2 s" in late.json()["error"]["message"]
            engine.gate.set()
            await running
            await client.post("/v1/score", json={"sentences": ["x"]})
            assert [b for b, _ in engine.shapes] == [1, 1], "the expired request never ran"

    asyncio.run(scenario())


def test_not_ready_until_warm_then_ready(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        runtime = Runtime(fake_settings(warmup=True), engine)
        async with serving(runtime, ready=False) as client:
            assert error_of(await client.get("/readyz")) == (503, "not_ready")
            assert "warming up" in (await client.get("/readyz")).text
            refused = await client.post("/v1/score", json={"sentences": ["a"]})
            assert error_of(refused) == (503, "not_ready")
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/v1/model")).json()["ready"] is False
            engine.gate.set()
            await runtime.wait_warm()
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.post("/v1/score", json={"sentences": ["a"]})).status_code == 200

    asyncio.run(scenario())


def test_failed_warm_up_is_not_ready_and_not_alive(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        runtime = Runtime(fake_settings(warmup=True), FakeEngine(poison_id=0))  # pads are 0
        async with serving(runtime) as client:
            response = await client.get("/readyz")
            assert error_of(response) == (503, "not_ready") and "failed" in response.text
            # Liveness fails too, so the orchestrator restarts instead of waiting forever.
            assert error_of(await client.get("/healthz")) == (503, "not_alive")

    asyncio.run(scenario())


def test_drain_finishes_admitted_work_and_refuses_new(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        runtime = Runtime(fake_settings(), engine)
        async with serving(runtime) as client:
            admitted = asyncio.ensure_future(
                client.post("/v1/score", json={"sentences": ["the cat", "a dog"]}))
            await until_running(engine)
            drained = asyncio.ensure_future(runtime.drain())
            await asyncio.sleep(0)
            assert error_of(await client.get("/readyz")) == (503, "not_ready")
            late = await client.post("/v1/score", json={"sentences": ["a"]})
            assert error_of(late) == (503, "not_ready") and "draining" in late.text
            assert not drained.done()
            engine.gate.set()
            assert (await admitted).status_code == 200
            assert await drained is True

    asyncio.run(scenario())


def test_engine_fault_fails_only_its_batch(fake_settings: MakeSettings,
                                           tiny_tokenizer_path: Path) -> None:
    poison = Tokenizer.from_file(str(tiny_tokenizer_path)).token_to_id("9")

    async def scenario() -> None:
        engine = FakeEngine(poison_id=poison)
        async with serving(Runtime(fake_settings(max_batch_size=1), engine)) as client:
            poisoned, healthy = await asyncio.gather(
                client.post("/v1/score", json={"sentences": ["9"]}),
                client.post("/v1/score", json={"sentences": ["the cat"]}))
            assert error_of(poisoned) == (500, "inference_failed")
            assert "injected" not in poisoned.text, "internals stay in the log"
            assert healthy.status_code == 200
            again = await client.post("/v1/rerank", json={"hypotheses": ["the dog", ""]})
            assert again.status_code == 200

    asyncio.run(scenario())


def test_api_keys_guard_v1_but_not_probes(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        settings = fake_settings(api_keys="k1,k2")
        async with serving(Runtime(settings, FakeEngine())) as client:
            body = {"sentences": ["a"]}
            for path, payload in (("/v1/score", body), ("/v1/tokenize", body),
                                  ("/v1/rerank", {"hypotheses": ["a"]})):
                assert error_of(await client.post(path, json=payload)) == (401, "unauthorized")
            assert error_of(await client.get("/v1/model")) == (401, "unauthorized")
            wrong = await client.post("/v1/score", json=body, headers={"x-api-key": "k3"})
            assert error_of(wrong) == (401, "unauthorized")
            assert wrong.headers["www-authenticate"] == "Bearer"
            ok = await client.post("/v1/score", json=body, headers={"authorization": "Bearer k2"})
            assert ok.status_code == 200
            assert (await client.get("/v1/model", headers={"x-api-key": "k1"})).status_code == 200
            for probe in ("/healthz", "/readyz", "/metrics"):
                assert (await client.get(probe)).status_code == 200

    asyncio.run(scenario())


def test_a_client_that_leaves_gets_its_work_dropped(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        runtime = Runtime(fake_settings(), engine)
        async with running_app(runtime) as app, httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
            first = asyncio.ensure_future(client.post("/v1/score", json={"sentences": ["a"]}))
            await until_running(engine)
            # A raw ASGI request whose client hangs up while its sentences are queued.
            body = json.dumps({"sentences": ["the cat", "the dog"]}).encode()
            hang_up = asyncio.Event()
            sent: list[dict[str, Any]] = []
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await hang_up.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "POST", "scheme": "http", "path": "/v1/score", "raw_path": b"",
                     "query_string": b"", "root_path": "", "server": ("test", 80),
                     "client": ("test", 1), "headers": [(b"content-type", b"application/json"),
                                                        (b"content-length", str(len(body)).encode())]}
            request = asyncio.ensure_future(app(scope, receive, send))

            async def queued() -> bool:
                return runtime.batcher.depth == 2

            await eventually(queued)
            hang_up.set()
            await request
            assert sent[0]["status"] == 499
            engine.gate.set()
            await first
            assert engine.shapes == [(1, 3)], "the departed client's sentences never ran"
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_rejections_total", reason="client_gone") == 1

    asyncio.run(scenario())

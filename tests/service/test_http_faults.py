"""Refusal paths over HTTP with a fake engine: 429, 504, 503, 500, client gone; engine faults
and broken artifacts. (API keys and the other access rules: test_security.py.)

A gated fake engine holds a batch "running" for as long as a test needs, so queue states are
set up by events, not by sleeping and hoping.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import FakeEngine, error_of, eventually, metric_value, running_app, serving
from tokenizers import Tokenizer

from service.artifact import ArtifactError, sha256_file
from service.disconnect import EXTENSION, Client, ClientWatch, unless_client_leaves
from service.errors import ClientGone
from service.model_host import ModelHost, Phase
from service.settings import Settings

MakeSettings = Callable[..., Settings]


async def until_running(engine: FakeEngine) -> None:
    assert await asyncio.to_thread(engine.entered.wait, 5), "the engine never started"


def test_scores_follow_the_engine_exactly(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        async with serving(ModelHost(fake_settings(), FakeEngine())) as client:
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
        async with serving(ModelHost(settings, engine)) as client:
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
        async with serving(ModelHost(fake_settings(request_timeout_s=0.2), engine)) as client:
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
        host = ModelHost(fake_settings(warmup=True), engine)
        async with serving(host, ready=False) as client:
            assert error_of(await client.get("/readyz")) == (503, "not_ready")
            assert "warming up" in (await client.get("/readyz")).text
            refused = await client.post("/v1/score", json={"sentences": ["a"]})
            assert error_of(refused) == (503, "not_ready")
            assert (await client.get("/healthz")).status_code == 200
            assert (await client.get("/v1/model")).json()["ready"] is False
            engine.gate.set()
            await host.wait_warm()
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.post("/v1/score", json={"sentences": ["a"]})).status_code == 200

    asyncio.run(scenario())


def test_failed_warm_up_is_not_ready_and_not_alive(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        host = ModelHost(fake_settings(warmup=True), FakeEngine(poison_id=0))  # pads are 0
        async with serving(host) as client:
            response = await client.get("/readyz")
            assert error_of(response) == (503, "not_ready") and "failed" in response.text
            # Liveness fails too, so the orchestrator restarts instead of waiting forever.
            assert error_of(await client.get("/healthz")) == (503, "not_alive")

    asyncio.run(scenario())


def test_drain_finishes_admitted_work_and_refuses_new(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        host = ModelHost(fake_settings(), engine)
        async with serving(host) as client:
            admitted = asyncio.ensure_future(
                client.post("/v1/score", json={"sentences": ["the cat", "a dog"]}))
            await until_running(engine)
            drained = asyncio.ensure_future(host.drain())
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
        async with serving(ModelHost(fake_settings(max_batch_size=1), engine)) as client:
            for round_ in range(5):  # a fault, then healthy batches, again and again
                poisoned, healthy = await asyncio.gather(
                    client.post("/v1/score", json={"sentences": ["9"]}),
                    client.post("/v1/score", json={"sentences": ["the cat"]}))
                assert error_of(poisoned) == (500, "inference_failed")
                assert "injected" not in poisoned.text, "internals stay in the log"
                assert healthy.status_code == 200, round_
                again = await client.post("/v1/rerank", json={"hypotheses": ["the dog", ""]})
                assert again.status_code == 200
                # One failed batch is one bad input, not a broken engine: still ready.
                assert (await client.get("/readyz")).status_code == 200
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_inference_failures_total",
                                kind="batch_error") == 5
            assert metric_value(metrics, "electric_requests_total", endpoint="/v1/score",
                                status="500") == 5

    asyncio.run(scenario())


def test_a_failing_engine_turns_not_ready_until_a_probe_batch_succeeds(
        fake_settings: MakeSettings) -> None:
    """Three failed batches in a row: /readyz 503 and new work 503 (another replica can take
    it); each /readyz then tries one tiny batch, and the first that succeeds makes it ready."""
    async def scenario() -> None:
        engine = FakeEngine()
        host = ModelHost(fake_settings(), engine)
        async with serving(host) as client:
            engine.failures_left = 5  # a device that fails 5 batches, then recovers
            for _ in range(3):
                failed = await client.post("/v1/score", json={"sentences": ["the cat"]})
                assert error_of(failed) == (500, "inference_failed")
            for _ in range(2):  # batches 4 and 5: the probes fail
                probe = await client.get("/readyz")
                assert error_of(probe) == (503, "not_ready") and "failing" in probe.text
            refused = await client.post("/v1/score", json={"sentences": ["the cat"]})
            assert error_of(refused) == (503, "not_ready") and "failing" in refused.text
            assert (await client.get("/healthz")).status_code == 200, "no restart needed"
            assert (await client.get("/readyz")).status_code == 200  # the probe succeeded
            served = await client.post("/v1/score", json={"sentences": ["the cat", "a dog"]})
            assert served.status_code == 200
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_inference_failures_total",
                                kind="batch_error") == 5

    asyncio.run(scenario())


def test_non_finite_energies_fail_only_the_request_holding_them(
        fake_settings: MakeSettings, tiny_tokenizer_path: Path) -> None:
    nan_id = Tokenizer.from_file(str(tiny_tokenizer_path)).token_to_id("9")

    async def scenario() -> None:
        engine = FakeEngine(gated=True, nan_id=nan_id)
        async with serving(ModelHost(fake_settings(), engine)) as client:
            first = asyncio.ensure_future(client.post("/v1/score", json={"sentences": ["a"]}))
            await until_running(engine)
            # All three queue behind the stalled batch, so they share the next one.
            bad = asyncio.ensure_future(client.post("/v1/score", json={"sentences": ["9 9"]}))
            good = asyncio.ensure_future(client.post("/v1/score", json={"sentences": ["a b"]}))
            ranked = asyncio.ensure_future(client.post("/v1/rerank",
                                                       json={"hypotheses": ["the cat"]}))
            await eventually(lambda: _depth_is(client, 3))
            engine.gate.set()
            assert (await first).status_code == 200
            assert error_of(await bad) == (500, "inference_failed")
            assert "non-finite" in (await bad).text
            assert (await good).status_code == 200 and (await ranked).status_code == 200
            assert engine.shapes[1] == (3, 4), "one batch held all three texts"
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_inference_failures_total",
                                kind="non_finite_row") == 1
            assert metric_value(metrics, "electric_inference_failures_total",
                                kind="batch_error") == 0

    asyncio.run(scenario())


async def _depth_is(client: httpx.AsyncClient, depth: int) -> bool:
    return metric_value((await client.get("/metrics")).text, "electric_queue_depth") == depth


@pytest.mark.parametrize("told_by", ["receive", "watch"])
def test_a_client_that_leaves_gets_its_work_dropped(fake_settings: MakeSettings,
                                                   told_by: str) -> None:
    """The disconnect comes as ``receive``'s http.disconnect (any ASGI server), or from the
    ClientWatch the service's own server puts in the scope (then ``receive`` never says it)."""

    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        host = ModelHost(fake_settings(), engine)
        async with running_app(host) as app, httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
            first = asyncio.ensure_future(client.post("/v1/score", json={"sentences": ["a"]}))
            await until_running(engine)
            # A raw ASGI request whose client hangs up while its sentences are queued.
            body = json.dumps({"sentences": ["the cat", "the dog"]}).encode()
            hang_up = asyncio.Event()
            sent: list[dict[str, Any]] = []
            messages = [{"type": "http.request", "body": body, "more_body": False}]

            watch = ClientWatch()

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                if told_by == "watch":
                    await asyncio.Event().wait()  # forever: only the watch tells
                await hang_up.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "POST", "scheme": "http", "path": "/v1/score", "raw_path": b"",
                     "query_string": b"", "root_path": "", "server": ("test", 80),
                     "client": ("test", 1), "headers": [(b"content-type", b"application/json"),
                                                        (b"content-length", str(len(body)).encode())]}
            if told_by == "watch":
                scope["extensions"] = {EXTENSION: watch}
            request = asyncio.ensure_future(app(scope, receive, send))

            async def queued() -> bool:
                return host.batcher.depth == 2

            await eventually(queued)
            if told_by == "watch":
                watch.lost()
            else:
                hang_up.set()
            await request
            assert sent[0]["status"] == 499
            engine.gate.set()
            await first
            assert engine.shapes == [(1, 3)], "the departed client's sentences never ran"
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_rejections_total", reason="client_gone") == 1

    asyncio.run(scenario())


def test_work_for_a_client_already_gone_is_never_started() -> None:
    async def scenario() -> None:
        watch = ClientWatch()
        watch.lost()
        started = False

        async def work() -> int:
            nonlocal started
            started = True
            return 1

        async def receive() -> dict[str, Any]:
            raise AssertionError("the watch is asked, not receive")

        with pytest.raises(ClientGone):
            await unless_client_leaves(Client(receive, watch), work())
        assert not started and watch.on_leave is None
        await asyncio.sleep(0)  # no cancellation left pending on this task

    asyncio.run(scenario())


def _onnx_with_inputs(names: list[str]) -> bytes:
    """A valid ONNX model with the given int64 inputs and an ``energies`` output."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["B", "T"]) for n in names]
    output = helper.make_tensor_value_info("energies", TensorProto.FLOAT, ["B", "T"])
    graph = helper.make_graph([helper.make_node("Cast", [names[0]], ["energies"],
                                                to=TensorProto.FLOAT)],
                              "wrong", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _rewrite_model(folder: Path, content: bytes) -> None:
    """Replace the model file and keep the manifest's sha256 in step with it."""
    (folder / "model.onnx").write_bytes(content)
    manifest = json.loads((folder / "electric.json").read_text())
    manifest["variants"]["fp32"]["sha256"] = sha256_file(folder / "model.onnx")
    (folder / "electric.json").write_text(json.dumps(manifest))


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing-folder": (lambda f: shutil.rmtree(f), "does not exist"),
    "manifest-not-json": (lambda f: (f / "electric.json").write_text("{oops"), "not valid JSON"),
    "sha256-mismatch": (lambda f: (f / "model.onnx").write_bytes(b"flipped"),
                        "the manifest says"),
    "model-not-onnx": (lambda f: _rewrite_model(f, b"not a protobuf at all"),
                       "ONNX Runtime cannot load"),
    "wrong-onnx-inputs": (lambda f: _rewrite_model(f, _onnx_with_inputs(["tokens", "mask"])),
                          "the artifact contract is ['input_ids', 'attention_mask']"),
    "tokenizer-corrupt": (lambda f: (f / "tokenizer.json").write_text("[]"),
                          "not a usable tokenizers file"),
    "tokenizer-missing": (lambda f: (f / "tokenizer.json").unlink(), "lacks the tokenizer"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_broken_artifact_fails_start_up_with_the_reason(
        fake_artifact: Path, tmp_path: Path, kind: str) -> None:
    folder = tmp_path / "artifact"
    shutil.copytree(fake_artifact, folder)
    corrupt, reason = CORRUPTIONS[kind]
    corrupt(folder)
    host = ModelHost(Settings(artifact=folder, variant="fp32", warmup=False))

    async def scenario() -> None:
        with pytest.raises(ArtifactError, match=re.escape(reason)):
            async with running_app(host):
                pass
        assert not host.ready

    asyncio.run(scenario())


def test_a_client_gone_while_sending_its_body_is_counted_as_499(
        fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        host = ModelHost(fake_settings(), FakeEngine())
        async with running_app(host) as app, httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
            messages = [{"type": "http.disconnect"},
                        {"type": "http.request", "body": b'{"sent', "more_body": True}]

            async def receive() -> dict[str, Any]:
                return messages.pop()

            async def send(message: dict[str, Any]) -> None:
                pass

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "POST", "scheme": "http", "path": "/v1/score", "raw_path": b"",
                     "query_string": b"", "root_path": "", "server": ("test", 80),
                     "client": ("test", 1), "headers": []}
            await app(scope, receive, send)
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_requests_total", endpoint="/v1/score",
                                status="499") == 1
            assert metric_value(metrics, "electric_rejections_total", reason="client_gone") == 1

    asyncio.run(scenario())


def test_a_drain_that_runs_out_of_time_still_answers_everyone(
        fake_settings: MakeSettings) -> None:
    """Past drain_timeout_s the process closes anyway: work still queued or running gets 503,
    not silence, and nothing waits on the stuck engine."""
    async def scenario() -> None:
        engine = FakeEngine(gated=True)
        host = ModelHost(fake_settings(drain_timeout_s=0.1), engine)
        try:
            async with serving(host) as client:
                running = asyncio.ensure_future(client.post("/v1/score",
                                                            json={"sentences": ["a"]}))
                await until_running(engine)
                queued = asyncio.ensure_future(client.post("/v1/score",
                                                           json={"sentences": ["b"]}))
                await eventually(lambda: _depth_is(client, 1))
                assert await host.drain() is False
                await host.close()  # what the lifespan does next
                for response in (await running, await queued):
                    assert error_of(response) == (503, "not_ready")
                    assert "shut down" in response.text
        finally:
            engine.gate.set()

    asyncio.run(scenario())


def test_the_ready_gauge_follows_readiness(fake_settings: Callable[..., Settings]) -> None:
    async def scenario() -> None:
        host = ModelHost(fake_settings(), FakeEngine())
        async with serving(host) as client:
            assert "electric_ready 1.0" in (await client.get("/metrics")).text
            host.phase = Phase.DRAINING
            assert "electric_ready 0.0" in (await client.get("/metrics")).text
            host.phase = Phase.READY

    asyncio.run(scenario())

"""The Python client: typed results from the app, retries on 429/503 honouring Retry-After."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import FakeEngine, free_port, running_app
from live_server import live_server

from service.client import (
    AsyncElectricClient,
    ElectricClient,
    ElectricError,
    RetryPolicy,
    retry_after_s,
)
from service.model_host import ModelHost
from service.schemas import Hypothesis, HypothesisList, RerankResponse, ScoreResponse
from service.settings import Settings


class Refusing(httpx.AsyncBaseTransport):
    """Answers the first ``refusals`` requests itself, then hands requests to ``inner``."""

    def __init__(self, inner: httpx.AsyncBaseTransport, refusals: list[httpx.Response]):
        self.inner, self.refusals, self.seen = inner, list(refusals), 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.refusals:
            return self.refusals.pop(0)
        return await self.inner.handle_async_request(request)


def overloaded(retry_after: str | None = None, status: int = 429) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, headers=headers,
                          json={"error": {"type": "overloaded", "message": "queue full"}})


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the client's waits instead of sleeping through them."""
    recorded: list[float] = []

    async def fake_async_sleep(seconds: float) -> None:
        recorded.append(seconds)

    monkeypatch.setattr("service.client.asyncio.sleep", fake_async_sleep)
    monkeypatch.setattr("service.client.time.sleep", recorded.append)
    return recorded


def with_app(fake_settings: Callable[..., Settings],
             scenario: Callable[[httpx.AsyncBaseTransport], Any]) -> None:
    async def run() -> None:
        async with running_app(ModelHost(fake_settings(), FakeEngine())) as app:
            await scenario(httpx.ASGITransport(app=app))

    asyncio.run(run())


def test_async_client_returns_typed_results(fake_settings: Callable[..., Settings]) -> None:
    async def scenario(transport: httpx.AsyncBaseTransport) -> None:
        async with AsyncElectricClient("http://service", transport=transport) as client:
            scored = await client.score(["the cat sat", "a dog"])
            assert isinstance(scored, ScoreResponse) and scored.model == "fake"
            assert [r.num_tokens for r in scored.results] == [3, 2]
            ranked = await client.rerank(["the cat", ("a dog ran", 2.0),
                                          Hypothesis(text="", score=-1.0)],
                                         lm_weight=0.0, length_bonus=0.0)
            assert isinstance(ranked, RerankResponse) and ranked.hypotheses is not None
            assert [h.index for h in ranked.hypotheses] == [1, 0, 2]  # by base score alone
            many = await client.rerank_lists([HypothesisList(id="x", hypotheses=["a", "b"]),
                                              {"id": 7, "hypotheses": ["c"]}])
            assert many.lists is not None and [lst.id for lst in many.lists] == ["x", 7]
            info = await client.model()
            assert info.manifest["name"] == "fake" and info.ready

    with_app(fake_settings, scenario)


def test_429_then_200_waits_as_told(fake_settings: Callable[..., Settings],
                                    waits: list[float]) -> None:
    async def scenario(app: httpx.AsyncBaseTransport) -> None:
        transport = Refusing(app, [overloaded("2"), overloaded(None, status=503)])
        async with AsyncElectricClient("http://service", transport=transport,
                                       retry=RetryPolicy(backoff_s=0.5)) as client:
            scored = await client.score(["the cat sat"])
        assert scored.results[0].num_tokens == 3 and transport.seen == 3
        assert waits[0] == 2.0  # the server's Retry-After
        assert 0.5 <= waits[1] <= 1.0  # no header: the second backoff (0.5 doubled), jittered

    with_app(fake_settings, scenario)


def test_gives_up_after_the_last_attempt_and_never_retries_422(
        fake_settings: Callable[..., Settings], waits: list[float]) -> None:
    async def scenario(app: httpx.AsyncBaseTransport) -> None:
        transport = Refusing(app, [overloaded("1")] * 5)
        async with AsyncElectricClient("http://service", transport=transport,
                                       retry=RetryPolicy(attempts=3)) as client:
            with pytest.raises(ElectricError) as info:
                await client.score(["the cat"])
            assert info.value.status == 429 and info.value.type == "overloaded"
            assert transport.seen == 3 and waits == [1.0, 1.0]
            transport.refusals.clear()
            with pytest.raises(ElectricError) as info:
                await client.score([" "])
            assert info.value.status == 422 and info.value.type == "invalid_input"
            assert transport.seen == 4  # refused once, not retried
        # A Retry-After beyond what the policy waits for is not waited for.
        transport = Refusing(app, [overloaded("3600")])
        async with AsyncElectricClient("http://service", transport=transport) as client:
            with pytest.raises(ElectricError, match="429 overloaded"):
                await client.score(["the cat"])

    with_app(fake_settings, scenario)


def test_retry_after_forms() -> None:
    assert retry_after_s(overloaded("7")) == 7.0
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_s(overloaded(later)) or 0) <= 30
    assert retry_after_s(overloaded("soon")) is None and retry_after_s(overloaded()) is None


def test_next_step_decides_what_to_retry_and_how_long_to_wait() -> None:
    policy = RetryPolicy(attempts=2, backoff_s=1.0, max_retry_after_s=60.0)
    done, invalid = httpx.Response(200), httpx.Response(422)
    assert policy.next_step(0, done) is done
    assert policy.next_step(0, invalid) is invalid  # not retried: the caller raises it
    assert policy.next_step(0, overloaded("7")) == 7.0
    assert 0.5 <= float(policy.next_step(0, overloaded(status=503))) <= 1.0
    assert 0.5 <= float(policy.next_step(0, httpx.ConnectError("refused"))) <= 1.0
    with pytest.raises(ElectricError, match="429 overloaded"):
        policy.next_step(0, overloaded("3600"))  # longer than the policy waits for
    with pytest.raises(ElectricError, match="429 overloaded"):
        policy.next_step(1, overloaded("7"))  # the last attempt
    with pytest.raises(httpx.ConnectError):
        policy.next_step(1, httpx.ConnectError("refused"))


def test_sync_client_retries_429_then_200(waits: list[float]) -> None:
    answers = iter([overloaded("1"), httpx.Response(200, json={
        "model": "m", "results": [{"score": -1.0, "num_tokens": 1, "tokens": ["a"],
                                   "energies": [1.0], "offsets": [[0, 1]],
                                   "truncated": False}]})])
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        assert request.headers["authorization"] == "Bearer secret"
        return next(answers)

    with ElectricClient("http://x", api_key="secret",
                        transport=httpx.MockTransport(handler)) as client:
        result = client.score(["a"])
    assert result.results[0].score == -1.0 and waits == [1.0] and len(bodies) == 2


def test_sync_client_retries_a_refused_connection(waits: list[float]) -> None:
    client = ElectricClient(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=2))
    with client, pytest.raises(httpx.ConnectError):
        client.model()
    assert len(waits) == 1


@pytest.fixture(scope="module")
def server(tiny_artifact: Path) -> Iterator[str]:
    with live_server(tiny_artifact) as url:
        yield url


def test_sync_client_against_a_real_server(server: str) -> None:
    with ElectricClient(server, timeout_s=30) as client:
        scored = client.score(["the cat sat on the mat"])
        assert scored.model == "tiny-test" and scored.results[0].num_tokens == 6
        ranked = client.rerank(["the cat sat", "sat cat the"], lm_weight=1.0)
        assert ranked.hypotheses is not None and len(ranked.hypotheses) == 2
        assert ranked.lm_weight == 1.0
        with pytest.raises(ElectricError) as info:
            client.score(["the " * 100])
        assert info.value.status == 422 and "at most 62" in info.value.message


def test_rerank_leaves_what_is_not_given_to_the_service() -> None:
    """No weights, no prior in the body: the service's manifest decides (one rule)."""
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={"model": "m", "lm_weight": 1.0, "length_bonus": 0.0,
                                         "rank_prior": "log", "hypotheses": []})

    with ElectricClient("http://x", transport=httpx.MockTransport(handler)) as client:
        client.rerank(["a", Hypothesis(text="b"), Hypothesis(text="c", score=0.0), ("d", 1.0)])
        client.rerank_lists([{"hypotheses": ["a"]}], rank_prior="none", lm_weight=0.5)
    assert bodies[0] == {"hypotheses": ["a", {"text": "b"}, {"text": "c", "score": 0.0},
                                        {"text": "d", "score": 1.0}], "truncate": False}
    assert bodies[1] == {"lists": [{"id": None, "hypotheses": ["a"]}], "truncate": False,
                         "lm_weight": 0.5, "rank_prior": "none"}

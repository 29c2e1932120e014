"""What one request may ask: characters before tokenizing, positions against the measured
throughput, turns at the tokenizer, and a deadline that runs from admission."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from harness import FAKE_MAX_POSITIONS, FakeEngine, error_of, serving

from service.model_host import ModelHost
from service.settings import Settings

MakeSettings = Callable[..., Settings]


def test_texts_over_the_character_bound_are_refused_untokenized(
        fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        host = ModelHost(fake_settings(max_sentence_chars=50), FakeEngine())
        async with serving(host) as client:
            refused = await client.post("/v1/score", json={"sentences": ["the cat", "!" * 51]})
            assert error_of(refused) == (422, "invalid_input")
            assert "sentences[1] has 51 characters; at most 50" in refused.text
            cut = await client.post("/v1/score", json={"sentences": ["the cat " * 10],
                                                       "truncate": True})
            assert cut.status_code == 200 and cut.json()["results"][0]["truncated"]
            lists = {"lists": [{"hypotheses": ["the cat"]}, {"hypotheses": ["a", "!" * 60]}]}
            refused = await client.post("/v1/rerank", json=lists)
            assert error_of(refused) == (422, "invalid_input")
            assert "lists[1].hypotheses[1] has 60 characters" in refused.text

    asyncio.run(scenario())


def test_a_request_over_the_position_limit_gets_413_with_both_figures(
        fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        engine = FakeEngine()
        host = ModelHost(fake_settings(max_request_tokens=20), engine)
        async with serving(host) as client:
            ok = await client.post("/v1/score", json={"sentences": ["the cat sat"] * 4})
            assert ok.status_code == 200  # 4 x 5 positions
            refused = await client.post("/v1/score", json={"sentences": ["the cat sat"] * 5})
            assert error_of(refused) == (413, "payload_too_large")
            assert "has 25 tokens with [CLS] and [SEP]; the limit is 20" in refused.text
            assert len(engine.shapes) == 1, "the refused request never reached the engine"
            info = (await client.get("/v1/model")).json()["request_limits"]
            assert info["max_request_tokens"] == 20
            assert info["source"] == "ELECTRIC_MAX_REQUEST_TOKENS"

    asyncio.run(scenario())


def test_the_default_position_limit_is_measured_throughput_times_half_the_deadline(
        fake_settings: MakeSettings) -> None:
    """A fake engine that takes at least 50 ms a batch scores at most rows x length / 0.05
    positions a second, so the limit can be no more than half the deadline's worth of that."""
    async def scenario() -> None:
        host = ModelHost(fake_settings(warmup=True, request_timeout_s=2.0),
                          FakeEngine(delay_s=0.05))
        async with serving(host) as client:
            info = (await client.get("/v1/model")).json()["request_limits"]
        rows = 1024 // FAKE_MAX_POSITIONS  # the CPU default batch budget
        fastest = rows * FAKE_MAX_POSITIONS / 0.05
        assert 0 < info["positions_per_s"] <= fastest
        assert info["max_request_tokens"] == int(info["positions_per_s"] * 2.0 * 0.5)
        assert info["source"].startswith("measured") and "2 s deadline" in info["source"]
        assert info["max_sentence_chars"] == 32 * (FAKE_MAX_POSITIONS - 2)

    asyncio.run(scenario())


def test_the_deadline_runs_from_admission_and_covers_tokenizing(
        fake_settings: MakeSettings) -> None:
    """Tokenizing takes 0.3 s of a 0.5 s deadline and a batch takes 0.3 s: 504, where a
    deadline started at the queue would have let it through."""
    async def scenario() -> None:
        host = ModelHost(fake_settings(request_timeout_s=0.5), FakeEngine(delay_s=0.3))
        async with serving(host) as client:
            quick = await client.post("/v1/score", json={"sentences": ["the cat sat"] * 30})
            assert quick.status_code == 200
            encode = host.tokenizer.encode

            def slow_encode(*args: object) -> object:
                time.sleep(0.3)
                return encode(*args)  # type: ignore[arg-type]

            host.tokenizer.encode = slow_encode  # type: ignore[method-assign]
            late = await client.post("/v1/score", json={"sentences": ["the cat sat"] * 30})
            assert error_of(late) == (504, "deadline_exceeded")
            assert "deadline of 0.5 s" in late.text

    asyncio.run(scenario())


def test_large_requests_take_turns_at_the_tokenizer(fake_settings: MakeSettings) -> None:
    async def scenario() -> None:
        host = ModelHost(fake_settings(tokenize_concurrency=1), FakeEngine())
        async with serving(host) as client:
            encode, lock = host.tokenizer.encode, threading.Lock()
            inside, most = [0], [0]

            def counted(*args: object) -> object:
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.05)
                try:
                    return encode(*args)  # type: ignore[arg-type]
                finally:
                    with lock:
                        inside[0] -= 1

            host.tokenizer.encode = counted  # type: ignore[method-assign]
            body = {"sentences": ["the cat sat " * 8] * 4}  # over the inline bound
            answers = await asyncio.gather(*(client.post("/v1/score", json=body)
                                             for _ in range(4)))
            assert [a.status_code for a in answers] == [200] * 4
            assert most[0] == 1

    asyncio.run(scenario())

"""Every endpoint over HTTP (in process, through the lifespan) on the tiny exported artifact."""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import error_of, metric_value, serving

from service.model_host import ModelHost
from service.settings import Settings

# fp32: int8's dynamic activation scales depend on the batch, so only fp32 can promise that a
# sentence scores the same alone and batched.
SETTINGS: dict[str, Any] = {"variant": "fp32", "intra_op_threads": 1}
WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "to", "house", "tree", "red", "big",
         "old", "new", "very", "not"]


def host_for(artifact: Path, **overrides: Any) -> ModelHost:
    return ModelHost(Settings(artifact=artifact, **{**SETTINGS, **overrides}))


async def score_one(client: httpx.AsyncClient, text: str) -> dict[str, Any]:
    response = await client.post("/v1/score", json={"sentences": [text]})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()["results"][0]
    return result


def test_score_response_shape(tiny_artifact: Path, sentences: list[str]) -> None:
    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            response = await client.post("/v1/score", json={"sentences": ["Café ÜBER the cat"]})
            assert response.status_code == 200
            body = response.json()
            assert body["model"] == "tiny-test"
            (s,) = body["results"]
            assert s["num_tokens"] == len(s["tokens"]) == len(s["energies"]) == len(s["offsets"])
            assert s["score"] == pytest.approx(-sum(s["energies"]), abs=1e-5)
            assert "[CLS]" not in s["tokens"] and "[SEP]" not in s["tokens"]
            text = "Café ÜBER the cat"
            assert [text[a:b] for a, b in s["offsets"]][-2:] == ["the", "cat"]
            assert s["truncated"] is False

    asyncio.run(scenario())


def test_json_body_is_read_whatever_the_declared_content_type(tiny_artifact: Path) -> None:
    """``curl -d '{...}'`` declares a form body; the README's first example must still work."""
    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            body = b'{"sentences": ["the cat sat on the mat"]}'
            for content_type in ("application/x-www-form-urlencoded", "text/plain"):
                response = await client.post("/v1/score", content=body,
                                             headers={"content-type": content_type})
                assert response.status_code == 200, response.text
                assert response.json()["results"][0]["tokens"][:2] == ["the", "cat"]

    asyncio.run(scenario())


def test_batch_scores_equal_single_scores(tiny_artifact: Path, sentences: list[str]) -> None:
    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            singles = [await score_one(client, s) for s in sentences]
            response = await client.post("/v1/score", json={"sentences": sentences})
            batched = response.json()["results"]
            for one, many in zip(singles, batched):
                assert one["tokens"] == many["tokens"]
                assert abs(one["score"] - many["score"]) <= 1e-4
                assert max(abs(a - b) for a, b in zip(one["energies"], many["energies"])) <= 1e-4

    asyncio.run(scenario())


def test_concurrent_mixed_lengths_all_answered_correctly(tiny_artifact: Path) -> None:
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(48)]

    async def scenario() -> None:
        # A small budget forces many batches, length sorting and split requests.
        host = host_for(tiny_artifact, max_batch_tokens=256, max_batch_size=8,
                              sort_window=16)
        async with serving(host) as client:
            singles = {t: (await score_one(client, t))["score"] for t in set(texts)}
            requests = [texts[i:i + 3] for i in range(0, len(texts), 3)]
            responses = await asyncio.gather(*(
                client.post("/v1/score", json={"sentences": r}) for r in requests))
            for request, response in zip(requests, responses):
                assert response.status_code == 200
                for text, result in zip(request, response.json()["results"]):
                    assert abs(result["score"] - singles[text]) <= 1e-4
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_batch_size_count") > len(set(texts))

    asyncio.run(scenario())


def test_rerank_one_list_and_many(tiny_artifact: Path) -> None:
    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            scores = {t: (await score_one(client, t))["score"]
                      for t in ["the cat sat", "the cat sat on the mat", "a dog"]}
            one = await client.post("/v1/rerank", json={
                "hypotheses": ["the cat sat", {"text": "the cat sat on the mat", "score": -2.5},
                               "", "the cat sat"],
                "lm_weight": 0.5, "length_bonus": 0.1})
            assert one.status_code == 200
            body = one.json()
            assert body["lm_weight"] == 0.5 and body["length_bonus"] == 0.1 and "lists" not in body
            ranked = body["hypotheses"]
            assert sorted(h["index"] for h in ranked) == [0, 1, 2, 3]
            assert [h["combined"] for h in ranked] == sorted(
                (h["combined"] for h in ranked), reverse=True)
            for h in ranked:
                expected = scores.get(h["text"], 0.0)
                assert h["score"] == pytest.approx(expected, abs=1e-4)
                assert h["combined"] == pytest.approx(
                    h["base_score"] + 0.5 * h["score"] + 0.1 * h["num_tokens"])
            empty = next(h for h in ranked if h["text"] == "")
            assert empty["score"] == 0.0 and empty["num_tokens"] == 0

            many = await client.post("/v1/rerank", json={"lists": [
                {"id": "utt-1", "hypotheses": ["a dog", "the cat sat"]},
                {"id": 7, "hypotheses": [{"text": "a dog", "score": 1.0}]}]})
            lists = many.json()["lists"]
            assert [lst["id"] for lst in lists] == ["utt-1", 7]
            assert many.json()["lm_weight"] == 1.0  # the manifest's default
            assert lists[1]["hypotheses"][0]["combined"] == pytest.approx(1.0 + scores["a dog"])

            # A beam-ordered list without scores: the prior stands in for them by position.
            beam = await client.post("/v1/rerank", json={
                "hypotheses": ["a dog", "the cat sat", "a dog"], "rank_prior": "log"})
            ranked = beam.json()["hypotheses"]
            assert beam.json()["rank_prior"] == "log"
            assert {h["index"]: h["base_score"] for h in ranked} == pytest.approx(
                {0: 0.0, 1: -math.log(2), 2: -math.log(3)})
            mixed = await client.post("/v1/rerank", json={
                "hypotheses": ["a dog", {"text": "a dog", "score": -1.0}], "rank_prior": "log"})
            assert sorted(h["base_score"] for h in mixed.json()["hypotheses"]) == [-1.0, 0.0]

    asyncio.run(scenario())


def test_tokenize_model_and_probes(tiny_artifact: Path) -> None:
    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            tok = (await client.post("/v1/tokenize", json={"sentences": ["The cat", ""]})).json()
            assert tok["results"][0]["tokens"] == ["the", "cat"]
            assert tok["results"][0]["offsets"] == [[0, 3], [4, 7]]
            assert tok["results"][1]["num_tokens"] == 0 and tok["max_tokens"] == 62
            info = (await client.get("/v1/model")).json()
            assert info["variant"] == "fp32" and info["provider"] == "CPUExecutionProvider"
            assert info["manifest"]["name"] == "tiny-test" and info["ready"] is True
            assert info["batching"]["max_batch_tokens"] == 1024  # the CPU default
            assert "file" not in str(info["manifest"])
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            assert (await client.get("/readyz")).json() == {"status": "ready"}
            assert (await client.get("/openapi.json")).status_code == 200

    asyncio.run(scenario())


def test_invalid_input_is_422_with_the_error_shape(tiny_artifact: Path) -> None:
    long_text = "the " * 100

    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            cases = [
                ("/v1/score", {"sentences": ["the cat", "   "]}, "sentences[1]"),
                ("/v1/score", {"sentences": []}, "sentences"),
                ("/v1/score", {"sentences": [long_text]}, "100 tokens"),
                ("/v1/score", {"sentence": ["x"]}, "sentence"),
                ("/v1/rerank", {"hypotheses": ["a"], "lm_weight": "NaN"}, "lm_weight"),
                ("/v1/rerank", {"hypotheses": ["a"], "lists": [{"hypotheses": ["b"]}]},
                 "exactly one"),
                ("/v1/rerank", {"lm_weight": 1.0}, "exactly one"),
                ("/v1/rerank", {"lists": [{"hypotheses": ["a", long_text]}]},
                 "lists[0].hypotheses[1]"),
            ]
            for path, body, mention in cases:
                response = await client.post(path, json=body)
                assert error_of(response) == (422, "invalid_input"), body
                assert mention in response.json()["error"]["message"]
            broken = await client.post("/v1/score", content=b"{not json",
                                       headers={"content-type": "application/json"})
            assert error_of(broken) == (422, "invalid_input")
            cut = await client.post("/v1/score", json={"sentences": [long_text], "truncate": True})
            assert cut.status_code == 200 and cut.json()["results"][0]["truncated"] is True
            assert cut.json()["results"][0]["num_tokens"] == 62
            assert error_of(await client.get("/v1/nothing")) == (404, "not_found")
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_rejections_total",
                                reason="invalid_input") >= len(cases) + 1

    asyncio.run(scenario())


def test_size_limits_are_413(tiny_artifact: Path) -> None:
    async def scenario() -> None:
        host = host_for(tiny_artifact, max_sentences=4, max_hypotheses=3,
                              max_body_bytes=2048)
        async with serving(host) as client:
            many = await client.post("/v1/score", json={"sentences": ["a"] * 5})
            assert error_of(many) == (413, "payload_too_large")
            assert "5 sentences" in many.json()["error"]["message"] and "4" in many.text
            hyps = await client.post("/v1/rerank", json={"lists": [
                {"hypotheses": ["a", "b"]}, {"hypotheses": ["c", "d"]}]})
            assert error_of(hyps) == (413, "payload_too_large")
            body = await client.post("/v1/score", json={"sentences": ["a" * 3000]})
            assert error_of(body) == (413, "payload_too_large")
            assert "2048" in body.json()["error"]["message"]

            async def chunks() -> Any:
                for _ in range(4):
                    yield b" " * 1000

            streamed = await client.post("/v1/score", content=chunks())
            assert error_of(streamed) == (413, "payload_too_large")

    asyncio.run(scenario())


def test_metrics_move_with_traffic(tiny_artifact: Path) -> None:
    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            before = (await client.get("/metrics")).text
            assert metric_value(before, "electric_model_info", name="tiny-test", variant="fp32",
                                provider="CPUExecutionProvider") == 1.0
            for _ in range(3):
                await client.post("/v1/score", json={"sentences": ["the cat sat", "a dog"]})
            after = (await client.get("/metrics")).text
            assert metric_value(after, "electric_requests_total", endpoint="/v1/score",
                                status="200") == 3
            assert metric_value(after, "electric_tokens_scored_total") == 15
            assert metric_value(after, "electric_request_duration_seconds_count",
                                endpoint="/v1/score") == 3
            for name in ("electric_queue_wait_seconds_count",
                         "electric_inference_duration_seconds_count",
                         "electric_batch_size_count"):
                assert metric_value(after, name) > metric_value(before, name), name
            assert metric_value(after, "electric_batch_tokens_sum", kind="padded") >= \
                metric_value(after, "electric_batch_tokens_sum", kind="real") > 0
            assert metric_value(after, "electric_queue_depth") == 0
            assert "electric_in_flight_requests" in after

    asyncio.run(scenario())

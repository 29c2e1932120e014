"""POST /rerank in TEI's and Cohere's shapes, on the tiny exported model through the lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import FakeEngine, error_of, serving

from service.model_host import ModelHost
from service.settings import Settings

SETTINGS: dict[str, Any] = {"variant": "fp32", "intra_op_threads": 1}
QUERY = "the cat"
TEXTS = ["sat on the mat", "mat the on sat", "sat", "ran to the old house today", "sat on the mat"]


def host_for(artifact: Path, **overrides: Any) -> ModelHost:
    return ModelHost(Settings(artifact=artifact, **{**SETTINGS, **overrides}))


async def scored(client: httpx.AsyncClient, sentences: list[str]) -> list[dict[str, Any]]:
    response = await client.post("/v1/score", json={"sentences": sentences})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def text_part(result: dict[str, Any], query: str) -> float:
    """-sum of the energies of the tokens after the query, from a /v1/score result."""
    return -sum(e for e, (start, _) in zip(result["energies"], result["offsets"])
                if start >= len(query))


def test_tei_form_ranks_by_the_text_score_given_the_query(tiny_artifact: Path) -> None:
    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            response = await client.post("/rerank", json={"query": QUERY, "texts": TEXTS,
                                                          "return_text": True})
            assert response.status_code == 200, response.text
            ranks = response.json()
            joined = await scored(client, [f"{QUERY} {t}" for t in TEXTS])
            alone = await scored(client, TEXTS)
        expected = [text_part(r, QUERY) for r in joined]
        assert sorted(r["index"] for r in ranks) == list(range(len(TEXTS)))
        for r in ranks:
            assert r["score"] == pytest.approx(expected[r["index"]], abs=1e-4)
            assert r["text"] == TEXTS[r["index"]]
        # Best first, ties (the repeated text) in the request's order.
        assert [r["index"] for r in ranks] == sorted(range(len(TEXTS)),
                                                     key=lambda i: -expected[i])
        assert ranks[[r["index"] for r in ranks].index(0)]["score"] == pytest.approx(
            ranks[[r["index"] for r in ranks].index(4)]["score"])
        # The query conditions the text: its energies differ from the text's alone.
        assert any(abs(e - a["score"]) > 1e-3 for e, a in zip(expected, alone))

    asyncio.run(scenario())


def test_an_empty_query_scores_as_v1_score(tiny_artifact: Path) -> None:
    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            response = await client.post("/rerank", json={"query": "", "texts": TEXTS[:4],
                                                          "top_n": 2})
            alone = await scored(client, TEXTS[:4])
        ranks = response.json()
        best = sorted(range(4), key=lambda i: -alone[i]["score"])[:2]
        assert [r["index"] for r in ranks] == best
        assert [r["score"] for r in ranks] == [alone[i]["score"] for i in best]
        assert all("text" not in r for r in ranks)

    asyncio.run(scenario())


def test_cohere_form(tiny_artifact: Path) -> None:
    documents: list[Any] = [TEXTS[0], {"text": TEXTS[1]}, TEXTS[3]]

    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            response = await client.post("/rerank", json={
                "model": "rerank-english-v3.0", "query": QUERY, "documents": documents,
                "top_n": 2, "return_documents": True}, headers={"x-request-id": "cohere-1"})
            assert response.status_code == 200, response.text
            bare = await client.post("/rerank", json={"query": QUERY, "documents": documents})
            tei = await client.post("/rerank", json={"query": QUERY,
                                                     "texts": [TEXTS[0], TEXTS[1], TEXTS[3]]})
        body = response.json()
        assert set(body) == {"id", "model", "results"}
        assert body["id"] == "cohere-1" and body["model"] == "tiny-test"
        everything = {r["index"]: r["relevance_score"] for r in bare.json()["results"]}
        assert all("document" not in r for r in bare.json()["results"])
        assert everything == pytest.approx({r["index"]: r["score"] for r in tei.json()})
        top = sorted(everything, key=lambda i: -everything[i])[:2]
        assert [r["index"] for r in body["results"]] == top
        plain = [d if isinstance(d, str) else d["text"] for d in documents]
        assert [r["document"]["text"] for r in body["results"]] == [plain[i] for i in top]
        assert bare.json()["id"] == bare.headers["x-request-id"]

    asyncio.run(scenario())


def test_truncation_keeps_the_query_and_cuts_the_text(tiny_artifact: Path) -> None:
    long_text = " ".join(["the cat sat on the mat"] * 20)  # 120 tokens, the model takes 62

    async def scenario() -> None:
        async with serving(host_for(tiny_artifact)) as client:
            refused = await client.post("/rerank", json={"query": QUERY,
                                                         "texts": ["sat", long_text]})
            cut = await client.post("/rerank", json={"query": QUERY, "texts": [long_text],
                                                     "truncate": True})
            joined = await client.post("/v1/score", json={"sentences": [f"{QUERY} {long_text}"],
                                                          "truncate": True})
            full = await client.post("/rerank", json={
                "query": long_text, "texts": ["sat on the mat"], "truncate": True})
        status, kind = error_of(refused)
        message = refused.json()["error"]["message"]
        assert (status, kind) == (422, "invalid_input")
        assert message.startswith("the query with texts[1] has 122 tokens, the model scores "
                                  "at most 62")
        assert cut.json()[0]["score"] == pytest.approx(
            text_part(joined.json()["results"][0], QUERY), abs=1e-4)
        assert error_of(full) == (422, "invalid_input")
        assert "the query fills all 62 tokens" in full.json()["error"]["message"]
        assert "texts[0]" in full.json()["error"]["message"]

    asyncio.run(scenario())


@pytest.mark.parametrize("body, status, words", [
    ({"query": "a"}, 422, "exactly one of 'texts'"),
    ({"query": "a", "texts": ["b"], "documents": ["c"]}, 422, "exactly one of 'texts'"),
    ({"texts": ["b"]}, 422, "query: Field required"),
    ({"query": "a", "texts": []}, 422, "texts: List should have at least 1 item"),
    ({"query": "a", "texts": ["b"], "return_documents": True}, 422,
     "return_documents: Extra inputs are not permitted"),
    ({"query": "a", "documents": ["b"], "return_text": True}, 422,
     "return_text: Extra inputs are not permitted"),
    ({"query": "a", "texts": ["b"], "raw_scores": False}, 422, "does not give"),
    ({"query": "a", "texts": ["b"], "top_n": 0}, 422, "top_n: Input should be greater than"),
    ({"query": "a", "documents": [{"txt": "b"}]}, 422, "documents[0].text: Field required"),
    ({"query": "a", "documents": [3]}, 422, "a document is a string or an object"),
    ({"query": "a\x00", "texts": ["b"]}, 422, "control character U+0000"),
    ({"query": "a", "texts": ["b"] * 5}, 413, "the request has 5 texts; the limit is 4"),
    ({"query": "a", "documents": ["b"] * 5}, 413, "5 documents; the limit is 4"),
])
def test_bad_bodies_are_refused_with_the_reason(
        fake_settings: Callable[..., Settings], body: dict[str, Any], status: int,
        words: str) -> None:
    async def scenario() -> httpx.Response:
        async with serving(ModelHost(fake_settings(max_hypotheses=4), FakeEngine())) as client:
            return await client.post("/rerank", json=body)

    response = asyncio.run(scenario())
    assert error_of(response)[0] == status, response.text
    assert words in response.json()["error"]["message"]


def test_raw_scores_true_and_empty_texts_are_served(
        fake_settings: Callable[..., Settings]) -> None:
    async def scenario() -> httpx.Response:
        async with serving(ModelHost(fake_settings(), FakeEngine())) as client:
            return await client.post("/rerank", json={"query": "a cat", "raw_scores": True,
                                                      "texts": ["", "sat"]})

    ranks = asyncio.run(scenario()).json()
    assert {r["index"]: r["score"] for r in ranks}[0] == 0.0  # no tokens, nothing to sum


def test_the_api_key_guards_it(fake_settings: Callable[..., Settings]) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        host = ModelHost(fake_settings(api_keys=["s3cret"]), FakeEngine())
        async with serving(host) as client:
            body = {"query": "a", "texts": ["b"]}
            return (await client.post("/rerank", json=body),
                    await client.post("/rerank", json=body,
                                      headers={"authorization": "Bearer s3cret"}))

    without, with_key = asyncio.run(scenario())
    assert error_of(without) == (401, "unauthorized") and with_key.status_code == 200

"""Bad input, one case per row: always a 4xx in the one error shape, naming the place, the
value and the limit; never a 500. A fake engine, so only the HTTP layer is under test.

The rows: invalid JSON, wrong types, empty lists, empty or blank text, control characters and
invalid Unicode, over-long texts, too many texts, oversized bodies, non-finite and out-of-range
numbers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from harness import FakeEngine, error_of, metric_value, serving

from service.model_host import ModelHost
from service.settings import Settings

MakeSettings = Callable[..., Settings]
LIMITS: dict[str, Any] = {"max_sentences": 4, "max_hypotheses": 6, "max_body_bytes": 8192}
LONG = "the " * 40  # 40 tokens; the fake artifact scores at most 30

# (id, path, body: JSON-able value or raw bytes, status, words the message must contain)
BAD: list[tuple[str, str, Any, int, tuple[str, ...]]] = [
    # -- not JSON ------------------------------------------------------------------------
    ("json-syntax", "/v1/score", b"{not json", 422, ("not valid JSON", "character 1")),
    ("json-truncated", "/v1/score", b'{"sentences": ["a"]', 422, ("not valid JSON",)),
    ("json-empty-body", "/v1/score", b"", 422, ("body", "required")),
    ("json-raw-control", "/v1/score", b'{"sentences": ["a\x01"]}', 422,
     ("not valid JSON", "control character")),
    ("json-not-utf8", "/v1/score", b'{"sentences": ["caf\xe9"]}', 422, ("not UTF-8", "0xe9")),
    ("json-deep-nesting", "/v1/score", b"[" * 1500 + b"]" * 1500, 422, ("deeper", "levels")),
    ("json-huge-integer", "/v1/rerank",
     b'{"lists": [{"id": 1' + b"0" * 5000 + b', "hypotheses": ["a"]}]}', 422, ("4300 digits",)),
    # -- wrong types and shapes ----------------------------------------------------------
    ("type-top-level-list", "/v1/score", [], 422, ("body", "dictionary")),
    ("type-top-level-null", "/v1/score", None, 422, ("body",)),
    ("type-string-for-list", "/v1/score", {"sentences": "the cat"}, 422,
     ("sentences", "valid list", "'the cat'")),
    ("type-number-for-text", "/v1/score", {"sentences": [1]}, 422,
     ("sentences[0]", "valid string", "got 1")),
    ("type-null-text", "/v1/score", {"sentences": ["a", None]}, 422, ("sentences[1]",)),
    ("type-nested-list", "/v1/tokenize", {"sentences": [["a"]]}, 422, ("sentences[0]",)),
    ("type-string-bool", "/v1/score", {"sentences": ["a"], "truncate": "yes"}, 422,
     ("truncate", "boolean", "'yes'")),
    ("type-int-bool", "/v1/score", {"sentences": ["a"], "truncate": 1}, 422, ("truncate",)),
    ("type-unknown-field", "/v1/score", {"sentence": ["a"]}, 422, ("sentence",)),
    ("type-number-hypothesis", "/v1/rerank", {"hypotheses": ["a", 5]}, 422,
     ("hypotheses[1]", "string or an object")),
    ("type-number-hyp-text", "/v1/rerank", {"hypotheses": [{"text": 5}]}, 422,
     ("hypotheses[0].text",)),
    ("type-string-base-score", "/v1/rerank", {"hypotheses": [{"text": "a", "score": "high"}]},
     422, ("hypotheses[0].score", "'high'")),
    ("type-string-weight", "/v1/rerank", {"hypotheses": ["a"], "lm_weight": "0.5"}, 422,
     ("lm_weight", "'0.5'")),
    ("type-unknown-hyp-field", "/v1/rerank", {"hypotheses": [{"text": "a", "scor": 1}]}, 422,
     ("hypotheses[0].scor",)),
    ("type-float-id", "/v1/rerank", {"lists": [{"id": 1.5, "hypotheses": ["a"]}]}, 422,
     ("lists[0].id", "64-bit integer")),
    ("type-long-id", "/v1/rerank", {"lists": [{"id": "x" * 300, "hypotheses": ["a"]}]}, 422,
     ("lists[0].id", "256")),
    ("type-huge-int-id", "/v1/rerank", {"lists": [{"id": 2**64, "hypotheses": ["a"]}]}, 422,
     ("lists[0].id", "9223372036854775807")),
    ("type-both-forms", "/v1/rerank", {"hypotheses": ["a"], "lists": [{"hypotheses": ["b"]}]},
     422, ("exactly one",)),
    ("type-neither-form", "/v1/rerank", {"lm_weight": 1.0}, 422, ("exactly one",)),
    # -- empty lists ---------------------------------------------------------------------
    ("empty-sentences", "/v1/score", {"sentences": []}, 422, ("sentences", "at least 1")),
    ("empty-tokenize", "/v1/tokenize", {"sentences": []}, 422, ("sentences", "at least 1")),
    ("empty-hypotheses", "/v1/rerank", {"hypotheses": []}, 422, ("hypotheses", "at least 1")),
    ("empty-lists", "/v1/rerank", {"lists": []}, 422, ("lists", "at least 1")),
    ("empty-inner-list", "/v1/rerank", {"lists": [{"hypotheses": ["a"]}, {"hypotheses": []}]},
     422, ("lists[1].hypotheses", "at least 1")),
    # -- empty or blank text (/v1/score only) ---------------------------------------------
    ("blank-empty", "/v1/score", {"sentences": [""]}, 422, ("sentences[0]", "empty")),
    ("blank-whitespace", "/v1/score", {"sentences": ["a", " \t\n "]}, 422,
     ("sentences[1]", "whitespace")),
    ("blank-zero-width", "/v1/score", {"sentences": ["\u200b"]}, 422,
     ("sentences[0]", "no tokens")),
    ("blank-combining-mark", "/v1/score", {"sentences": ["the cat", "\u0301"]}, 422,
     ("sentences[1]", "no tokens")),
    # -- control characters and invalid Unicode -------------------------------------------
    ("ctrl-nul", "/v1/score", {"sentences": ["a\u0000b"]}, 422,
     ("sentences[0]", "U+0000", "character 1")),
    ("ctrl-escape", "/v1/score", {"sentences": ["\u001b[31mred"]}, 422, ("U+001B",)),
    ("ctrl-c1", "/v1/tokenize", {"sentences": ["next\u0085line"]}, 422, ("U+0085",)),
    ("ctrl-in-hypothesis", "/v1/rerank", {"hypotheses": [{"text": "a\u0007"}]}, 422,
     ("hypotheses[0].text", "U+0007")),
    ("surrogate-high", "/v1/score", b'{"sentences": ["ok", "\\ud800abc"]}', 422,
     ("sentences[1]", "lone surrogate", "U+D800")),
    ("surrogate-low", "/v1/tokenize", b'{"sentences": ["\\udfff"]}', 422, ("U+DFFF",)),
    ("surrogate-half-emoji", "/v1/rerank", b'{"hypotheses": ["smile \\ud83d"]}', 422,
     ("hypotheses[0]", "U+D83D", "character 6")),
    ("surrogate-utf8-bytes", "/v1/score", b'{"sentences": ["\xed\xa0\x80"]}', 422,
     ("U+D800",)),
    ("surrogate-in-id", "/v1/rerank", b'{"lists": [{"id": "\\udc00", "hypotheses": ["a"]}]}',
     422, ("lists[0].id",)),
    # -- over-long text without truncate ---------------------------------------------------
    ("long-score", "/v1/score", {"sentences": ["a", LONG]}, 422,
     ("sentences[1]", "40 tokens", "at most 30", "truncate")),
    ("long-tokenize", "/v1/tokenize", {"sentences": [LONG]}, 422, ("40 tokens", "at most 30")),
    ("long-hypothesis", "/v1/rerank", {"lists": [{"hypotheses": ["a"]}, {"hypotheses": [LONG]}]},
     422, ("lists[1].hypotheses[0]", "40 tokens")),
    # -- too many texts ------------------------------------------------------------------
    ("many-sentences", "/v1/score", {"sentences": ["a"] * 5}, 413,
     ("5 sentences", "limit is 4")),
    ("many-tokenize", "/v1/tokenize", {"sentences": ["a"] * 9}, 413, ("9 sentences",)),
    ("many-hypotheses", "/v1/rerank",
     {"lists": [{"hypotheses": ["a"] * 4}, {"hypotheses": ["b"] * 3}]}, 413,
     ("7 hypotheses", "limit is 6")),
    # -- oversized body ------------------------------------------------------------------
    ("body-declared", "/v1/score", {"sentences": ["a" * 9000]}, 413,
     ("9019 bytes", "limit is 8192")),
    # -- non-finite and out-of-range numbers -----------------------------------------------
    ("num-nan-weight", "/v1/rerank", b'{"hypotheses": ["a"], "lm_weight": NaN}', 422,
     ("lm_weight", "finite", "nan")),
    ("num-inf-weight", "/v1/rerank", b'{"hypotheses": ["a"], "lm_weight": Infinity}', 422,
     ("lm_weight", "finite")),
    ("num-overflow-weight", "/v1/rerank", b'{"hypotheses": ["a"], "lm_weight": 1e400}', 422,
     ("lm_weight", "finite")),
    ("num-negative-weight", "/v1/rerank", {"hypotheses": ["a"], "lm_weight": -0.5}, 422,
     ("lm_weight", "greater than or equal to 0", "-0.5")),
    ("num-huge-weight", "/v1/rerank", {"hypotheses": ["a"], "lm_weight": 1e7}, 422,
     ("lm_weight", "1000000", "10000000.0")),
    ("num-huge-bonus", "/v1/rerank", {"hypotheses": ["a"], "length_bonus": -1e300}, 422,
     ("length_bonus", "-1000000")),
    ("num-nan-base-score", "/v1/rerank", b'{"hypotheses": [{"text": "a", "score": NaN}]}', 422,
     ("hypotheses[0].score", "finite")),
    ("num-inf-base-score", "/v1/rerank",
     b'{"lists": [{"hypotheses": [{"text": "a", "score": -Infinity}]}]}', 422,
     ("lists[0].hypotheses[0].score", "finite")),
    ("num-huge-base-score", "/v1/rerank", {"hypotheses": [{"text": "a", "score": 1e300}]}, 422,
     ("hypotheses[0].score", "1000000000")),
]

# Inputs near the edges that must still be served.
GOOD: list[tuple[str, str, Any]] = [
    ("tab-newline", "/v1/score", {"sentences": ["the\tcat\nsat\r\n"]}),
    ("emoji-pair", "/v1/score", b'{"sentences": ["the cat \\ud83d\\ude00"]}'),
    ("truncated", "/v1/score", {"sentences": [LONG], "truncate": True}),
    ("empty-hypothesis", "/v1/rerank", {"hypotheses": ["", "the cat"]}),
    ("empty-tokenize", "/v1/tokenize", {"sentences": [""]}),
    ("int-weight", "/v1/rerank", {"hypotheses": ["a"], "lm_weight": 2, "length_bonus": -1}),
    ("edge-numbers", "/v1/rerank", {"lists": [{"id": -(2**63), "hypotheses": [
        {"text": "a", "score": -1e9}, {"text": "b", "score": 1e9}]}], "lm_weight": 1e6,
        "length_bonus": 1e6}),
    ("at-limits", "/v1/score", {"sentences": ["a"] * 4}),
    ("special-token-text", "/v1/score", {"sentences": ["[SEP] [PAD] [CLS]"]}),
]


def _post(client: Any, path: str, body: Any) -> Any:
    if isinstance(body, bytes):
        return client.post(path, content=body, headers={"content-type": "application/json"})
    return client.post(path, content=json.dumps(body).encode(),
                       headers={"content-type": "application/json"})


@pytest.mark.parametrize("path, body, status, words",
                         [row[1:] for row in BAD], ids=[row[0] for row in BAD])
def test_bad_input_is_refused_with_the_reason(fake_settings: MakeSettings, path: str, body: Any,
                                              status: int, words: tuple[str, ...]) -> None:
    async def scenario() -> None:
        async with serving(ModelHost(fake_settings(**LIMITS), FakeEngine())) as client:
            response = await _post(client, path, body)
            code, type_ = error_of(response)
            assert code == status, response.text
            assert type_ == {413: "payload_too_large", 422: "invalid_input"}[status]
            message = response.json()["error"]["message"]
            for word in words:
                assert word in message, (word, message)
            assert "Traceback" not in message and "/service/" not in message
            metrics = (await client.get("/metrics")).text
            assert metric_value(metrics, "electric_rejections_total", reason=type_) == 1
            # The service is unharmed: the next request is served.
            assert (await client.post("/v1/score", json={"sentences": ["a"]})).status_code == 200

    asyncio.run(scenario())


@pytest.mark.parametrize("path, body", [row[1:] for row in GOOD], ids=[row[0] for row in GOOD])
def test_edge_inputs_are_served(fake_settings: MakeSettings, path: str, body: Any) -> None:
    async def scenario() -> None:
        async with serving(ModelHost(fake_settings(**LIMITS), FakeEngine())) as client:
            response = await _post(client, path, body)
            assert response.status_code == 200, response.text

    asyncio.run(scenario())


def test_a_streamed_body_is_cut_off_at_the_limit(fake_settings: MakeSettings) -> None:
    """Chunked, no Content-Length: refused once the limit is passed, not after the whole body."""
    async def scenario() -> None:
        sent = 0

        async def endless() -> Any:
            nonlocal sent
            while True:
                sent += 1000
                yield b" " * 1000

        async with serving(ModelHost(fake_settings(**LIMITS), FakeEngine())) as client:
            response = await client.post("/v1/score", content=endless())
            assert error_of(response) == (413, "payload_too_large")
            assert "more than 8192 bytes" in response.json()["error"]["message"]
            assert sent <= 10_000, "the body was read past the limit"

    asyncio.run(scenario())

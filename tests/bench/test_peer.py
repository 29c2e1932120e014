"""bench/peer.py: the peer's request bodies carry the same sentences and token counts."""

from __future__ import annotations

import json
from pathlib import Path

from bench.peer import write_bodies


def test_bodies_are_openai_embedding_requests_of_k_sentences(tmp_path: Path) -> None:
    sentences = [f"sentence {i}" for i in range(5)]
    tokens = [2, 3, 4, 5, 6]
    path, mean = write_bodies(tmp_path, "m", sentences, tokens, per_request=2)
    bodies = [json.loads(line) for line in path.read_text().splitlines()]
    assert bodies == [{"model": "m", "input": sentences[0:2]},
                      {"model": "m", "input": sentences[2:4]},
                      {"model": "m", "input": sentences[4:5]}]
    assert mean == (5 + 9 + 6) / 3

"""A rank prior re-orders alike over HTTP and on the command line.

A beam-ordered list without scores gets its base scores from its positions
(service/scoring.py ``base_scores``). The list here is built so that the prior decides the
order: its hypotheses stand worst Electric score first, and the manifest's ``lm_weight`` is
small enough that a ``linear`` prior outweighs every gap between the scores. So ``none`` must
turn the list round and ``linear`` must keep it, whether the prior comes from the manifest or
is named by the request or the command line; /v1/rerank and ``electric rerank`` must agree.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from harness import serving

from electric.cli import main
from service.artifact import RankPrior, load_manifest, write_manifest
from service.local import InProcessScorer
from service.model_host import ModelHost
from service.settings import Settings

TEXTS = ["the cat sat on the mat", "a dog ran to the house", "the big red tree",
         "a new old cat", "very not the dog"]
LOCAL = ["--variant", "fp32", "--threads", "1"]


@pytest.fixture(scope="module")
def beam(tiny_artifact: Path) -> list[str]:
    """TEXTS worst score first: Electric alone would reverse the list."""
    scores = {t: s.score for t, s in zip(TEXTS, InProcessScorer(tiny_artifact, "fp32", 1)
                                           .stream(TEXTS))}
    assert len(set(scores.values())) == len(TEXTS), "the test needs distinct scores"
    return sorted(TEXTS, key=lambda t: scores[t])


@pytest.fixture(scope="module")
def linear_artifact(tiny_artifact: Path, beam: list[str],
                    tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artifact whose manifest says: fitted with the linear prior, at an lm_weight
    that keeps every score gap below the prior's gap of 1 between neighbours."""
    scores = [s.score for s in InProcessScorer(tiny_artifact, "fp32", 1).stream(beam)]
    lm_weight = 0.5 / (max(scores) - min(scores))
    folder = tmp_path_factory.mktemp("linear") / "tiny-test"
    shutil.copytree(tiny_artifact, folder)
    write_manifest(folder, load_manifest(folder).with_rerank(lm_weight, 0.0, "linear"))
    return folder


def served_order(artifact: Path, hypotheses: list[str], prior: RankPrior | None) -> list[int]:
    body: dict[str, Any] = {"hypotheses": hypotheses}
    if prior is not None:
        body["rank_prior"] = prior

    async def ask() -> dict[str, Any]:
        host = ModelHost(Settings(artifact=artifact, variant="fp32", intra_op_threads=1))
        async with serving(host) as client:
            response = await client.post("/v1/rerank", json=body)
            assert response.status_code == 200, response.text
            answer: dict[str, Any] = response.json()
            return answer

    answer = asyncio.run(ask())
    assert answer["rank_prior"] == (prior or load_manifest(artifact).rerank.rank_prior)
    return [h["index"] for h in answer["hypotheses"]]


def cli_order(artifact: Path, hypotheses: list[str], prior: RankPrior | None,
              tmp_path: Path) -> list[int]:
    source, details = tmp_path / "beam.jsonl", tmp_path / "details.jsonl"
    source.write_text(json.dumps({"id": "utt", "hypotheses": hypotheses}) + "\n")
    given = [] if prior is None else ["--rank-prior", prior]
    assert main(["rerank", "-f", "jsonl", str(source), str(tmp_path / "out.jsonl"),
                 "--details", str(details), "--artifact", str(artifact), *LOCAL, *given]) == 0
    (row,) = [json.loads(line) for line in details.read_text().splitlines()]
    return [h["index"] for h in row["hypotheses"]]


@pytest.mark.parametrize("prior", [None, "none", "linear", "log"])
def test_http_and_cli_order_alike(linear_artifact: Path, beam: list[str],
                                  prior: RankPrior | None, tmp_path: Path) -> None:
    assert served_order(linear_artifact, beam, prior) == cli_order(linear_artifact, beam,
                                                                   prior, tmp_path)


def test_the_prior_decides_the_order_on_both_paths(linear_artifact: Path, beam: list[str],
                                                   tmp_path: Path) -> None:
    kept, reversed_ = list(range(len(beam))), list(reversed(range(len(beam))))
    # The manifest's prior (linear), named by neither the request nor the command line.
    assert served_order(linear_artifact, beam, None) == kept
    assert cli_order(linear_artifact, beam, None, tmp_path) == kept
    # Without a prior, the same weights let Electric's score decide.
    assert served_order(linear_artifact, beam, "none") == reversed_
    assert cli_order(linear_artifact, beam, "none", tmp_path) == reversed_

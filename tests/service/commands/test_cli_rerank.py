"""``electric rerank``: ordering, duplicates scored once, metrics before/after, every path."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live_server import live_server
from nbest_fakes import DictScorer

from electric.cli import main
from service.commands.rerank import base_scores, rank_document, score_document
from service.local import InProcessScorer
from service.rerank.nbest import NbestList, read_nbest
from service.rerank.nbest.document import Candidate
from service.scoring import Weights

LOCAL = ["--variant", "fp32", "--threads", "1"]
LISTS = [
    {"id": "a", "reference": "the cat sat on the mat",
     "hypotheses": ["the cat sat on the mat", "the cat sat on a mat", "a cat sat on the mat"]},
    {"id": "b", "reference": "she reads a good book today",
     "hypotheses": [{"text": "she read a good book today", "score": -1.0},
                    {"text": "she reads a good book today", "score": -1.2}, ""]},
    {"id": "c", "reference": "they were very happy",
     "hypotheses": ["they were very happy", "the cat sat on the mat"]},
]


@pytest.fixture(scope="module")
def server(tiny_artifact: Path) -> Iterator[str]:
    with live_server(tiny_artifact) as url:
        yield url


@pytest.fixture(scope="module")
def log_artifact(tiny_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny artifact with weights fitted, as the embedded model's were, with the log prior."""
    import shutil

    from service.artifact import load_manifest, write_manifest

    folder = tmp_path_factory.mktemp("log") / "tiny-test"
    shutil.copytree(tiny_artifact, folder)
    manifest = load_manifest(folder)
    write_manifest(folder, manifest.model_copy(update={"rerank": manifest.rerank.model_copy(
        update={"lm_weight": 0.05, "length_bonus": 0.01, "rank_prior": "log"})}))
    return folder


def jsonl(tmp_path: Path, lists: list[dict[str, object]] = LISTS) -> Path:
    path = tmp_path / "nbest.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lists))
    return path


def test_duplicates_are_scored_once(tmp_path: Path) -> None:
    doc = read_nbest("jsonl", jsonl(tmp_path))
    scorer = DictScorer()
    scores = score_document(doc, scorer, truncate=False, progress=False)
    assert sorted(scorer.asked) == sorted(set(scorer.asked))
    assert len(scorer.asked) == 7 and set(scores) == set(scorer.asked)


def test_rank_order_and_base_scores() -> None:
    lst = NbestList("x", [Candidate("one two three", None, 1), Candidate("one", None, 2),
                          Candidate("one two", None, 3)])
    assert base_scores(lst, "none") == [0.0, 0.0, 0.0]
    assert base_scores(lst, "linear") == [0.0, -1.0, -2.0]
    assert base_scores(lst, "log") == pytest.approx([0.0, -math.log(2), -math.log(3)])
    mixed = NbestList("y", [Candidate("a", -2.0, 1), Candidate("b", None, 2)])
    assert base_scores(mixed, "log") == [-2.0, 0.0]  # the file's scores win; none counts as 0

    class Doc:
        name, lists = "doc", [lst]

        def render(self, rankings: object = None) -> str:
            return ""

    scorer = DictScorer()  # score = -words, num_tokens = words
    scores = score_document(Doc(), scorer, False, False)
    ranked = rank_document(Doc(), scores, Weights(1.0, 0.0))[0]
    assert [r.index for r in ranked] == [1, 2, 0]
    # A length bonus above the per-word cost turns the order round.
    ranked = rank_document(Doc(), scores, Weights(1.0, 1.5))[0]
    assert [r.index for r in ranked] == [0, 2, 1]
    assert ranked[0].combined == pytest.approx(-3.0 + 1.5 * 3)


def test_jsonl_end_to_end_in_process(tmp_path: Path, tiny_artifact: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out, details = tmp_path / "out.jsonl", tmp_path / "details.jsonl"
    assert main(["rerank", "--format", "jsonl", str(jsonl(tmp_path)), str(out),
                 "--lm-weight", "0.5", "--length-bonus", "0.1", "--details", str(details),
                 "--artifact", str(tiny_artifact), *LOCAL]) == 0
    err = capsys.readouterr().err
    assert "3 lists, 8 hypotheses, 7 distinct texts scored by tiny-test" in err
    assert "lm_weight 0.5, length_bonus 0.1 (given)" in err
    assert "WER on 3 lists with references: before " in err and "after " in err

    scorer = InProcessScorer(tiny_artifact, "fp32", 1)
    for row, src in zip((json.loads(x) for x in out.read_text().splitlines()), LISTS):
        hyps = src["hypotheses"]
        texts = [h if isinstance(h, str) else h["text"] for h in hyps]  # type: ignore
        scores = list(scorer.stream(texts))
        combined = [(0.0 if isinstance(h, str) else h["score"]) + 0.5 * s.score  # type: ignore
                    + 0.1 * s.num_tokens for h, s in zip(hyps, scores)]  # type: ignore
        expected = sorted(range(len(texts)), key=lambda i: -combined[i])
        assert [e["index"] for e in row["electric"]] == expected
        assert row["hypotheses"] == [hyps[i] for i in expected]  # type: ignore
        assert [e["combined"] for e in row["electric"]] == pytest.approx(
            sorted(combined, reverse=True), abs=1e-4)
    rows = [json.loads(x) for x in details.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert set(rows[0]["hypotheses"][0]) == {"index", "text", "score", "base_score", "combined",
                                             "num_tokens"}


def test_weights_file_and_manifest_defaults(tmp_path: Path, tiny_artifact: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    args = ["rerank", "-f", "jsonl", str(jsonl(tmp_path)), str(out),
            "--artifact", str(tiny_artifact), *LOCAL]
    assert main(args) == 0
    assert "lm_weight 1, length_bonus 0 (from tiny-test's manifest)" in capsys.readouterr().err
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"lm_weight": 0.25, "length_bonus": -0.5, "rank_prior": "log",
                                   "metric": "wer"}))
    assert main([*args, "--weights", str(weights)]) == 0
    err = capsys.readouterr().err
    assert f"lm_weight 0.25, length_bonus -0.5 (from {weights})" in err
    weights.write_text('{"lm_weight": "heavy"}')
    assert main([*args, "--weights", str(weights)]) == 1
    assert "not a weights file" in capsys.readouterr().err


def test_kaldi_with_score_files_and_references(tmp_path: Path, tiny_artifact: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nbest.txt").write_text("u1-1 the cat sat\nu1-2 the cat sat on the mat\n"
                                        "u2-1 a dog ran\nu2-2 a dog\n")
    (tmp_path / "lm_cost").write_text("u1-1 1\nu1-2 9\nu2-1 2\nu2-2 2.5\n")
    (tmp_path / "text").write_text("u1 the cat sat on the mat\nu2 a dog ran\n")
    out = tmp_path / "out.txt"
    # lm_weight 0: the costs alone decide, so the file comes back in order; u1 picks 3 of 6
    # reference words (3 deletions), u2 is right: WER 3/9.
    assert main(["rerank", "-f", "kaldi", str(tmp_path / "nbest.txt"), str(out),
                 "--score-file", f"{tmp_path / 'lm_cost'}:-1", "--ref", str(tmp_path / "text"),
                 "--lm-weight", "0", "--length-bonus", "0",
                 "--artifact", str(tiny_artifact), *LOCAL]) == 0
    assert out.read_text() == (tmp_path / "nbest.txt").read_text()
    assert "WER on 2 lists with references: before 33.33%" in capsys.readouterr().err
    # A length bonus big enough overrides the costs: the longer hypothesis wins.
    assert main(["rerank", "-f", "kaldi", str(tmp_path / "nbest.txt"), str(out),
                 "--score-file", str(tmp_path / "lm_cost"), "--lm-weight", "0",
                 "--length-bonus", "10", "--artifact", str(tiny_artifact), *LOCAL]) == 0
    assert out.read_text().splitlines()[0] == "u1-2 the cat sat on the mat"


def test_moses_bleu_report(tmp_path: Path, tiny_artifact: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("sacrebleu")
    (tmp_path / "nbest").write_text(
        "0 ||| the cat sat on the mat ||| F0= -1 ||| -1\n"
        "0 ||| cat the mat on sat the ||| F0= -0.5 ||| -0.5\n")
    (tmp_path / "ref").write_text("the cat sat on the mat\n")
    assert main(["rerank", "-f", "moses", str(tmp_path / "nbest"), str(tmp_path / "out"),
                 "--ref", str(tmp_path / "ref"), "--metric", "bleu", "--lm-weight", "0",
                 "--length-bonus", "0", "--artifact", str(tiny_artifact), *LOCAL]) == 0
    err = capsys.readouterr().err
    assert "BLEU on 1 lists with references: before " in err and "oracle 100.00" in err
    assert "Electric= " in (tmp_path / "out").read_text()


def test_url_matches_in_process(tmp_path: Path, tiny_artifact: Path, server: str) -> None:
    path = jsonl(tmp_path)
    remote, local = tmp_path / "remote.jsonl", tmp_path / "local.jsonl"
    assert main(["rerank", "-f", "jsonl", str(path), str(remote), "--url", server,
                 "--request-size", "2"]) == 0
    assert main(["rerank", "-f", "jsonl", str(path), str(local),
                 "--artifact", str(tiny_artifact), *LOCAL]) == 0
    for r, lo in zip(remote.read_text().splitlines(), local.read_text().splitlines()):
        a, b = json.loads(r), json.loads(lo)
        assert a["hypotheses"] == b["hypotheses"]
        assert [e["score"] for e in a["electric"]] == pytest.approx(
            [e["score"] for e in b["electric"]], abs=1e-4)


def test_errors_name_file_and_line(tmp_path: Path, tiny_artifact: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hypotheses": ["ok"]}\n{"hypotheses": "not a list"}\n')
    assert main(["rerank", "-f", "jsonl", str(bad), str(tmp_path / "o"),
                 "--artifact", str(tiny_artifact), *LOCAL]) == 1
    assert f"{bad}:2: 'hypotheses' is missing or not a list" in capsys.readouterr().err
    long = jsonl(tmp_path, [{"hypotheses": ["fine"]}, {"hypotheses": ["ok", "the " * 80]}])
    assert main(["rerank", "-f", "jsonl", str(long), str(tmp_path / "o"),
                 "--artifact", str(tiny_artifact), *LOCAL]) == 1
    assert f"{long}:2: the hypothesis has 80 tokens" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_the_manifest_rank_prior_is_the_default(tmp_path: Path, tiny_artifact: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from service.artifact import load_manifest, write_manifest

    folder = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, folder)
    manifest = load_manifest(folder)
    write_manifest(folder, manifest.model_copy(update={"rerank": manifest.rerank.model_copy(
        update={"rank_prior": "log"})}))
    args = ["rerank", "-f", "jsonl", str(jsonl(tmp_path)), str(tmp_path / "out.jsonl"),
            "--artifact", str(folder), *LOCAL]
    assert main(args) == 0
    assert "lists carry no base scores: rank prior log" in capsys.readouterr().err
    assert main([*args, "--rank-prior", "none"]) == 0  # the command line still wins
    assert "rank prior none" in capsys.readouterr().err


def test_http_and_cli_rank_a_list_alike_with_the_manifests_prior(
        tmp_path: Path, log_artifact: Path) -> None:
    """One rule: a request or command that names no prior gets the manifest's, with its weights."""
    lists = [*LISTS, {"id": "d", "reference": "they were very happy",  # objects without scores
                      "hypotheses": [{"text": "they were happy"}, {"text": "they were very happy"}]}]
    path = jsonl(tmp_path, lists)
    body_lists: list[dict[str, Any]] = [{"id": x["id"], "hypotheses": x["hypotheses"]}
                                        for x in lists]
    local, remote = tmp_path / "local.details", tmp_path / "remote.details"
    assert main(["rerank", "-f", "jsonl", str(path), str(tmp_path / "o"), "--details", str(local),
                 "--artifact", str(log_artifact), *LOCAL]) == 0
    cli = [json.loads(x)["hypotheses"] for x in local.read_text().splitlines()]
    with live_server(log_artifact) as url, httpx.Client(base_url=url) as http:
        assert main(["rerank", "-f", "jsonl", str(path), str(tmp_path / "o"),
                     "--details", str(remote), "--url", url]) == 0
        many = http.post("/v1/rerank", json={"lists": body_lists}).json()
        one = http.post("/v1/rerank", json={"hypotheses": LISTS[0]["hypotheses"]}).json()
        none = http.post("/v1/rerank", json={"hypotheses": LISTS[0]["hypotheses"],
                                             "rank_prior": "none"}).json()
    assert (many["rank_prior"], many["lm_weight"], many["length_bonus"]) == ("log", 0.05, 0.01)
    by_url = [json.loads(x)["hypotheses"] for x in remote.read_text().splitlines()]
    for served, ranked_here, ranked_by_url in zip(many["lists"], cli, by_url):
        for other in (ranked_here, ranked_by_url):
            assert [h["index"] for h in served["hypotheses"]] == [h["index"] for h in other]
            assert [h["base_score"] for h in served["hypotheses"]] == pytest.approx(
                [h["base_score"] for h in other])
            assert [h["combined"] for h in served["hypotheses"]] == pytest.approx(
                [h["combined"] for h in other], abs=1e-4)
    # The prior stood in for the scores only where a list had none (a, c, d; not b).
    for served, src in zip(many["lists"], body_lists):
        bases = {h["index"]: h["base_score"] for h in served["hypotheses"]}
        hyps: list[Any] = src["hypotheses"]
        expected = ([h["score"] if isinstance(h, dict) else 0.0 for h in hyps]
                    if src["id"] == "b" else [-math.log1p(i) for i in range(len(hyps))])
        assert [bases[i] for i in range(len(hyps))] == pytest.approx(expected)
    assert one["rank_prior"] == "log" and one["hypotheses"] == many["lists"][0]["hypotheses"]
    # An explicit prior overrides the manifest's, the weights stay the manifest's.
    assert none["rank_prior"] == "none" and none["lm_weight"] == 0.05
    assert {h["base_score"] for h in none["hypotheses"]} == {0.0}

"""electric.Scorer: the Python API, against the tiny exported artifact and the docs' example."""

from __future__ import annotations

import contextlib
import io
import math
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from electric import Scorer
from service.artifact import ArtifactError
from service.local import InProcessScorer
from service.scoring import Weights

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "PYTHON.md"


def _blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block, in order."""
    return re.findall(r"```(\w*)\n(.*?)```", markdown, re.DOTALL)


def test_the_docs_example_prints_what_the_docs_say() -> None:
    blocks = _blocks(DOC.read_text())
    code = next(body for lang, body in blocks if lang == "python")
    printed = next(body for lang, body in blocks if lang == "")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), {})  # noqa: S102  (the docs' own example)
    got, want = out.getvalue().split("\n"), printed.split("\n")
    assert len(got) == len(want)
    for g, w in zip(got, want):
        # Last-digit differences between instruction sets are allowed, nothing else.
        g_words, w_words = g.split(), w.split()
        assert len(g_words) == len(w_words), (g, w)
        for gw, ww in zip(g_words, w_words):
            try:
                assert abs(float(gw) - float(ww)) <= 0.02, (g, w)
            except ValueError:
                assert gw == ww, (g, w)


def test_importing_the_package_loads_no_runtime() -> None:
    probe = ("import sys, electric; print(sorted({m.split('.')[0] for m in sys.modules} & "
             "{'onnxruntime', 'numpy', 'torch'}))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


def test_scores_equal_the_cli_scorer_and_do_not_depend_on_the_batch(
        tiny_artifact: Path, sentences: list[str]) -> None:
    reference = list(InProcessScorer(tiny_artifact, "fp32", 1).stream(sentences))
    with Scorer.load(tiny_artifact, "fp32", threads=1) as scorer:
        together = scorer.score(sentences)
        alone = [scorer.score([s])[0] for s in sentences]
        assert scorer.variant == "fp32" and scorer.providers[0] == "CPUExecutionProvider"
    assert [r.tokens for r in together] == [r.tokens for r in reference]
    for a, b, c in zip(together, alone, reference):
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.score == pytest.approx(c.score, abs=1e-6)
        assert a.score == pytest.approx(-sum(a.energies), abs=1e-4)
        assert len(a.offsets) == a.num_tokens == len(a.energies)


def test_rerank_is_the_service_ranking(tiny_artifact: Path, sentences: list[str]) -> None:
    hypotheses = sentences[:4] + [sentences[1]]  # a repeated string is scored once
    with Scorer.load(tiny_artifact, "fp32", threads=1) as scorer:
        ranked = scorer.rerank(hypotheses, base_scores=[-1.0, None, -0.5, -2.0, 0.0],
                               lm_weight=0.3, length_bonus=0.1)
        scores = {s: r for s, r in zip(hypotheses, scorer.score(hypotheses))}
    assert sorted(r.index for r in ranked) == list(range(5))
    combined = [r.combined for r in ranked]
    assert combined == sorted(combined, reverse=True)
    by_index = {r.index: r for r in ranked}
    assert by_index[0].combined == pytest.approx(
        -1.0 + 0.3 * by_index[0].score + 0.1 * by_index[0].num_tokens)
    assert by_index[1].base_score == 0.0  # None: no base score of its own
    for r in ranked:
        assert r.score == pytest.approx(scores[r.text].score, abs=1e-6)


def test_defaults_come_from_the_manifest(tiny_artifact: Path) -> None:
    with Scorer.load(tiny_artifact, "fp32", threads=1) as scorer:
        weights = scorer.defaults()
        ranked = scorer.rerank(["a b", "a"])
    assert isinstance(weights, Weights)
    assert all(math.isfinite(r.combined) for r in ranked)


@pytest.mark.parametrize(("call", "kind", "message"), [
    (lambda s: s.score("one string"), TypeError, "texts is one string; pass a list"),
    (lambda s: s.score(["fine", 3]), TypeError, r"texts\[1\] is a int, not a str"),
    (lambda s: s.score(["bad \ud800"]), ValueError, "lone surrogate U\\+D800 at character 4"),
    (lambda s: s.score(["a", "word " * (s.max_tokens + 5)]), ValueError,
     r"texts\[1\] has \d+ tokens, the model scores at most \d+; pass truncate=True"),
    (lambda s: s.score(["word " * 20_000]), ValueError,
     r"texts\[0\] has 100000 characters; at most \d+ are tokenized"),
    (lambda s: s.rerank([]), ValueError, "hypotheses is empty"),
    (lambda s: s.rerank(["a", "b"], base_scores=[1.0]), ValueError,
     "base_scores has 1 values for 2 hypotheses"),
    (lambda s: s.rerank(["a"], lm_weight=float("nan")), ValueError,
     "lm_weight is nan; it must be a finite number"),
    (lambda s: s.rerank(["a"], length_bonus="1"), TypeError, "length_bonus is a str"),
    (lambda s: s.rerank(["a"], rank_prior="cubic"), ValueError, "cubic"),
])
def test_bad_input_names_the_value_and_the_limit(
        tiny_artifact: Path, call: Callable[[Scorer], object], kind: type[Exception],
        message: str) -> None:
    with Scorer.load(tiny_artifact, "fp32", threads=1) as scorer, \
            pytest.raises(kind, match=message):
        call(scorer)


def test_truncate_scores_the_first_tokens(tiny_artifact: Path) -> None:
    with Scorer.load(tiny_artifact, "fp32", threads=1) as scorer:
        [cut] = scorer.score(["word " * (scorer.max_tokens + 5)], truncate=True)
        assert cut.truncated and cut.num_tokens == scorer.max_tokens


def test_load_refuses_what_it_cannot_load(tiny_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant 'q4' is not one of auto"):
        Scorer.load(tiny_artifact, "q4")
    with pytest.raises(ValueError, match="threads is -1"):
        Scorer.load(tiny_artifact, threads=-1)
    with pytest.raises(ArtifactError, match="has no electric.json"):
        Scorer.load(tmp_path)

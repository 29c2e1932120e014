"""``electric rerank``: re-order the n-best lists of a file by Electric's score, in its format.

Every distinct hypothesis text in the file is scored once (n-best lists repeat strings), in
process or by a service (--url); each list is then sorted by
``combined = base_score + lm_weight * score + length_bonus * num_tokens`` exactly as
/v1/rerank does (service/scoring.py ``rank``), and the file is written back in its own format.

The base score is the system's own score from the file. A list that carries none (the plain
JSONL of beam-ordered hypotheses, a Kaldi file without score files) gets a prior on its beam
position instead: ``none`` 0, ``linear`` -rank or ``log`` -ln(1 + rank), which keeps the
recogniser's order as evidence when its scores are lost. Weights and prior are resolved as
/v1/rerank resolves them (service/scoring.py ``resolve_weights``): the command line's, else the
``--weights`` file's, else the manifest's, so that weights come with the prior they were
fitted with.

When lists have references, the corpus metric (WER by default; BLEU or chrF for MT) is reported
for the base scores alone (before), the re-ranked choice (after) and the best choice (oracle).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, FiniteFloat

from service.artifact import ArtifactError, RankPrior
from service.client import ElectricError
from service.commands.progress import Progress
from service.local import TextRefused, TextScorer, add_scorer_arguments, open_scorer
from service.rerank.metrics import METRICS, format_value, metric_named
from service.rerank.nbest import (
    FORMATS,
    NbestDocument,
    NbestFormatError,
    NbestList,
    ReadOptions,
    ScoreFile,
    read_nbest,
)
from service.rerank.tuning import TuningList, choose, corpus_value, nbest_matrix, oracle_value
from service.schemas import Hypothesis, RankedHypothesis
from service.scoring import RANK_PRIORS, Scored, Weights, rank, resolve_weights
from service.scoring import base_scores as _base_scores

CLI_ERRORS = (NbestFormatError, TextRefused, ElectricError, ArtifactError, httpx.HTTPError,
              OSError, ValueError)
"""What a command reports as one line on stderr (exit status 1) rather than a traceback."""

Command = Callable[[argparse.Namespace], int]


def reports_errors(command: str) -> Callable[[Command], Command]:
    """Make ``electric <command>``'s ``run`` answer :data:`CLI_ERRORS` with a line and 1."""
    def wrap(run: Command) -> Command:
        @functools.wraps(run)
        def reporting(args: argparse.Namespace) -> int:
            try:
                return run(args)
            except CLI_ERRORS as exc:
                print(f"electric {command}: {exc}", file=sys.stderr)
                return 1
        return reporting
    return wrap


def add_nbest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", "-f", required=True, choices=FORMATS,
                   help="n-best file format (docs/CLI.md describes each)")
    p.add_argument("--ref", type=Path, help="references: 'id<TAB>text' lines (kaldi: a Kaldi "
                   "text file), or for moses/marian/fairseq line n = sentence n from 0")
    p.add_argument("--score-file", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="kaldi: a score file (ac_cost, lm_cost...) and its weight in the base "
                        "score (default -1: Kaldi scores are costs); repeat for several")
    p.add_argument("--rank-prior", choices=sorted(RANK_PRIORS), default=None,
                   help="base score for lists that carry none: 0 (none), -rank (linear) or "
                        "-ln(1+rank) (log); default: the --weights file's, else the model's")
    p.add_argument("--metric", choices=METRICS, default="wer",
                   help="metric against the references: wer (ASR), bleu or chrf (MT)")


def load_document(args: argparse.Namespace) -> NbestDocument:
    options = ReadOptions(references=args.ref,
                          score_files=[ScoreFile.parse(s) for s in args.score_file])
    return read_nbest(args.format, args.input, options)


def base_scores(lst: NbestList, prior: RankPrior) -> list[float]:
    """The file's scores (0 for a hypothesis without one), or the prior where none has one."""
    return _base_scores([c.base_score for c in lst.candidates], prior)


def score_document(doc: NbestDocument, scorer: TextScorer, truncate: bool,
                   progress: bool | None) -> dict[str, Scored]:
    """Every distinct hypothesis text's score; a too-long one is an error at its line."""
    texts = list(dict.fromkeys(c.text for lst in doc.lists for c in lst.candidates))
    scores: dict[str, Scored] = {}
    try:
        with Progress("hypotheses", len(texts), progress) as bar:
            for text, result in zip(texts, scorer.stream(texts, truncate)):
                scores[text] = result
                bar.advance()
    except TextRefused as exc:
        line = next((c.line for lst in doc.lists for c in lst.candidates if c.text == exc.text),
                    None)
        raise NbestFormatError(doc.name, line, f"the hypothesis {exc}") from None
    return scores


def rank_document(doc: NbestDocument, scores: dict[str, Scored],
                  weights: Weights) -> list[list[RankedHypothesis]]:
    """Each list as /v1/rerank ranks it: a hypothesis without a score in the file goes as a
    plain string, so the rank prior applies exactly where the service would apply it."""
    # model_construct: these are the file's own values, already checked by its reader; the
    # request limits that Hypothesis validates (text a client may send) are not theirs to meet.
    out = []
    for lst in doc.lists:
        hypotheses = [c.text if c.base_score is None
                      else Hypothesis.model_construct(text=c.text, score=c.base_score)
                      for c in lst.candidates]
        out.append([RankedHypothesis.of(r) for r in rank(hypotheses, scores, weights)])
    return out


def tuning_lists(doc: NbestDocument, scores: dict[str, Scored],
                 prior: RankPrior) -> tuple[list[TuningList], list[int]]:
    """The lists with a reference and at least one hypothesis, and their indices in ``doc``."""
    out, where = [], []
    for i, lst in enumerate(doc.lists):
        if lst.reference is None or not lst.candidates:
            continue
        texts = [c.text for c in lst.candidates]
        out.append(TuningList(reference=lst.reference, texts=texts,
                              base_scores=base_scores(lst, prior),
                              scores=[scores[t].score for t in texts],
                              num_tokens=[scores[t].num_tokens for t in texts]))
        where.append(i)
    return out, where


class _SavedWeights(BaseModel):
    model_config = ConfigDict(extra="allow")

    lm_weight: FiniteFloat
    length_bonus: FiniteFloat
    rank_prior: RankPrior | None = None


def read_weights(path: Path | None) -> dict[str, Any]:
    """What `electric tune --out` wrote: lm_weight, length_bonus, rank_prior and figures."""
    if path is None:
        return {}
    try:
        return _SavedWeights.model_validate_json(path.read_bytes()).model_dump()
    except ValueError as exc:
        raise ValueError(f"{path}: not a weights file from `electric tune --out`: {exc}") \
            from None


def _weights(args: argparse.Namespace, scorer: TextScorer,
             saved: dict[str, Any]) -> tuple[Weights, str]:
    """Command line, else the --weights file (all of it: weights and their prior), else the
    model's manifest; and where the weights came from."""
    if saved:
        defaults, source = Weights.of_section(saved), f"from {args.weights}"
    else:
        defaults, source = scorer.defaults(), f"from {scorer.name}'s manifest"
    if args.lm_weight is not None or args.length_bonus is not None:
        source = "given"
    return resolve_weights(defaults, args.lm_weight, args.length_bonus, args.rank_prior), source


def _report(doc: NbestDocument, scores: dict[str, Scored],
            rankings: Sequence[Sequence[RankedHypothesis]], prior: RankPrior,
            metric_name: str) -> str:
    lists, where = tuning_lists(doc, scores, prior)
    if not lists:
        return "no list has a reference: nothing to measure"
    m = nbest_matrix(lists, metric_named(metric_name))
    before = corpus_value(m, choose(m, Weights(0.0, 0.0)))
    after = corpus_value(m, np.asarray([rankings[i][0].index for i in where], dtype=np.int64))
    return (f"{metric_name.upper()} on {len(lists):,} lists with references: "
            f"before {format_value(metric_name, before)} (base scores alone), "
            f"after {format_value(metric_name, after)}, "
            f"oracle {format_value(metric_name, oracle_value(m))}")


def _details(path: Path, doc: NbestDocument,
             rankings: Sequence[Sequence[RankedHypothesis]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for lst, ranking in zip(doc.lists, rankings):
            f.write(json.dumps({"id": lst.id, "hypotheses": [r.model_dump() for r in ranking]},
                               ensure_ascii=False) + "\n")


def write_output(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)


@reports_errors("rerank")
def run(args: argparse.Namespace) -> int:
    saved = read_weights(args.weights)  # a bad file fails before any scoring
    doc = load_document(args)
    start = time.monotonic()
    scorer = open_scorer(args)
    try:
        scores = score_document(doc, scorer, args.truncate, args.progress)
        weights, source = _weights(args, scorer, saved)
    finally:
        scorer.close()
    prior = weights.rank_prior
    rankings = rank_document(doc, scores, weights)
    write_output(args.output, doc.render(rankings))
    if args.details:
        _details(args.details, doc, rankings)
    unscored = sum(1 for lst in doc.lists if not any(c.base_score is not None
                                                     for c in lst.candidates))
    counted = (f"{len(doc.lists):,} lists, "
               f"{sum(len(lst.candidates) for lst in doc.lists):,} hypotheses, "
               f"{len(scores):,} distinct texts scored by {scorer.name} in "
               f"{time.monotonic() - start:.1f} s")
    weighed = f"lm_weight {weights.lm_weight:.6g}, length_bonus {weights.length_bonus:.6g} " \
              f"({source})"
    if unscored:
        weighed += f"; {unscored:,} lists carry no base scores: rank prior {prior}"
        if prior == "none":
            weighed += " (for beam-ordered lists, --rank-prior log keeps the order as " \
                       "evidence)"
    lines = [counted, weighed, _report(doc, scores, rankings, prior, args.metric)]
    print("\n".join(f"electric rerank: {line}" for line in lines), file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("rerank", help="re-rank the n-best lists of a file, in its own format",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="n-best file (- for stdin)")
    p.add_argument("output", help="where to write it re-ranked (- for stdout)")
    add_nbest_arguments(p)
    p.add_argument("--lm-weight", type=float, help="default: --weights, else the manifest's")
    p.add_argument("--length-bonus", type=float, help="default: --weights, else the manifest's")
    p.add_argument("--weights", type=Path, help="a JSON file written by `electric tune --out`")
    p.add_argument("--details", type=Path,
                   help="also write JSONL: per list, every hypothesis's score, base score, "
                        "num_tokens and combined, best first")
    add_scorer_arguments(p)
    p.set_defaults(func=run)

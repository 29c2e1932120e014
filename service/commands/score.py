"""``electric score FILE|-``: one sentence a line in, one score a line out.

Output line n belongs to input line n: JSONL ``{"score", "num_tokens"}`` (with ``--energies``
also ``tokens`` and ``energies``), or TSV ``score<TAB>num_tokens[<TAB>energies]``. A blank line
scores 0 with no tokens, so the lines stay aligned. Input is read and written as it streams:
memory holds one window of sentences (256 in process; concurrency × request size with --url),
whatever the file's length.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any, TextIO

from service.commands.progress import Progress
from service.commands.rerank import reports_errors
from service.local import TextRefused, add_scorer_arguments, open_scorer
from service.scoring import Scored


def format_jsonl(s: Scored, energies: bool) -> str:
    row: dict[str, Any] = {"score": s.score, "num_tokens": s.num_tokens}
    if energies:
        row["tokens"], row["energies"] = s.tokens, s.energies
    if s.truncated:
        row["truncated"] = True
    return json.dumps(row, ensure_ascii=False)


def format_tsv(s: Scored, energies: bool) -> str:
    fields = [f"{s.score:.6f}", str(s.num_tokens)]
    if energies:
        fields.append(" ".join(f"{e:.4f}" for e in s.energies))
    return "\t".join(fields)


class _Lines:
    """The input's sentences, remembering the ones read but not yet answered (for messages)."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self.pending: deque[tuple[int, str]] = deque()

    def __iter__(self) -> Iterator[str]:
        for number, line in enumerate(self._stream, start=1):
            text = line.rstrip("\r\n")
            self.pending.append((number, text))
            yield text

    def line_of(self, text: str) -> int | None:
        return next((n for n, t in self.pending if t == text), None)


@reports_errors("score")
def run(args: argparse.Namespace) -> int:
    name = "<stdin>" if args.input == "-" else args.input
    with ExitStack() as stack:
        source = sys.stdin if args.input == "-" else stack.enter_context(
            open(args.input, encoding="utf-8"))
        out = sys.stdout if args.out == "-" else stack.enter_context(
            open(args.out, "w", encoding="utf-8"))
        scorer = open_scorer(args)
        stack.callback(scorer.close)
        bar = stack.enter_context(Progress("sentences", None, args.progress))
        lines = _Lines(source)
        write = format_jsonl if args.format == "jsonl" else format_tsv
        try:
            for result in scorer.stream(lines, args.truncate):
                lines.pending.popleft()
                out.write(write(result, args.energies) + "\n")
                bar.advance()
        except TextRefused as exc:
            where = lines.line_of(exc.text)
            raise ValueError(f"{name}:{where}: the sentence {exc}") from None
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("score", help="score sentences, one a line (JSONL or TSV out)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="UTF-8 text, one sentence a line (- for stdin)")
    p.add_argument("-o", "--out", default="-", help="output file (default: stdout)")
    p.add_argument("--format", choices=["jsonl", "tsv"], default="jsonl")
    p.add_argument("--energies", action="store_true",
                   help="also write each sentence's tokens and per-token energies")
    add_scorer_arguments(p)
    p.set_defaults(func=run)

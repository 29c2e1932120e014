"""``electric bulk score|rerank IN OUT``: score a corpus or re-rank many n-best lists, in this
process or on a Ray cluster.

IN is JSONL or Parquet (by extension). Score rows are ``{"id", "text"}``; rerank rows are the
n-best JSONL that ``electric rerank -f jsonl`` reads, ``{"id", "hypotheses": [text or {"text",
"score"}]}``. OUT is Parquet, or JSONL when its name ends in ``.jsonl``: score rows become
``{"id", "score", "num_tokens", "truncated"}`` (with ``--energies`` also ``tokens`` and
``energies``); a rerank row becomes ``{"id", "best", "best_index", "ranked": [...]}``, the list
best first with each hypothesis's index as given. Rows come out in no particular order: the id
says which is which.

``--engine local`` scores here with the in-process scorer (service/scorer.py) on all the cores.
``--engine ray`` runs Ray Data's ``map_batches`` with a pool of ``--workers`` actors, each
holding one scorer (its ONNX session loaded once, its threads = the CPUs it was given);
``--address`` joins a running cluster (``auto`` or ``ray://host:10001``), else a local one
starts on this machine. Ray schedules, retries and streams; this module only says what a batch
of rows becomes. rowwise int8 and fp32 score a sentence the same in any batch, so a score here
equals ``electric score``'s for the same text and variant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

from service.scorer import Scorer

ROW_BATCH = 256
"""Rows handed to one scorer call (local) or one actor call (Ray)."""
BLOCK_BYTES = 16 << 20
"""Input bytes per Ray Data block, at most (more blocks where the workers need them)."""
SPLIT_BELOW_BYTES = 64 << 20
"""Parquet inputs smaller than this are re-cut into blocks after reading."""


class BulkInputError(ValueError):
    """A row that cannot be scored: names the file, the row and what is wrong."""


def _text_of(item: Any, where: str) -> tuple[str, float | None]:
    if isinstance(item, str):
        return item, None
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        score = item.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
            raise BulkInputError(f"{where}.score is {score!r}, not a number")
        return item["text"], None if score is None else float(score)
    raise BulkInputError(f"{where} is {json.dumps(item, default=str)[:60]}; expected a string "
                         'or {"text": ..., "score": ...}')


def _id_of(row: dict[str, Any], number: int) -> Any:
    value = row.get("id")
    return number if value is None else value


class RowScorer:
    """What one batch of input rows becomes; one per process (local) or per Ray actor."""

    def __init__(self, mode: str, artifact: str | None, variant: str, threads: int,
                 energies: bool, truncate: bool, lm_weight: float | None = None,
                 length_bonus: float | None = None):
        self.mode, self.energies, self.truncate = mode, energies, truncate
        self.lm_weight, self.length_bonus = lm_weight, length_bonus
        self.scorer = Scorer.load(artifact, variant, threads)

    def rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return self._score(rows) if self.mode == "score" else self._rerank(rows)

    def _score(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        texts = []
        for row in rows:
            text = row.get("text")
            if not isinstance(text, str):
                raise BulkInputError(f"row id {_id_of(row, -1)!r}: 'text' is "
                                     f"{type(text).__name__}, not a string")
            texts.append(text)
        out = []
        for row, s in zip(rows, self.scorer.score(texts, self.truncate)):
            result: dict[str, Any] = {"id": row.get("id"), "score": s.score,
                                      "num_tokens": s.num_tokens, "truncated": s.truncated}
            if self.energies:
                result["tokens"], result["energies"] = s.tokens, s.energies
            out.append(result)
        return out

    def _rerank(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            hyps = row.get("hypotheses")
            if isinstance(hyps, (str, bytes)) or not isinstance(hyps, Iterable):
                raise BulkInputError(f"row id {row.get('id')!r}: 'hypotheses' is missing or "
                                     "not a list")
            given = [_text_of(h, f"row id {row.get('id')!r}: hypotheses[{i}]")
                     for i, h in enumerate(hyps)]
            scores = [s for _, s in given]
            ranked = self.scorer.rerank(
                [t for t, _ in given], scores if any(s is not None for s in scores) else None,
                self.lm_weight, self.length_bonus, truncate=self.truncate)
            out.append({"id": row.get("id"), "best": ranked[0].text,
                        "best_index": ranked[0].index,
                        "ranked": [{"index": r.index, "text": r.text, "score": r.score,
                                    "base_score": r.base_score, "combined": r.combined,
                                    "num_tokens": r.num_tokens} for r in ranked]})
        return out

    def __call__(self, batch: Any) -> Any:
        """Ray's map_batches entry: a pandas DataFrame of rows in, one of results out."""
        import pandas as pd

        rows = [{k: _plain(v) for k, v in r.items()} for r in batch.to_dict("records")]
        return pd.DataFrame(self.rows(rows))


def _plain(value: Any) -> Any:
    """Arrow and pandas give nested lists as numpy arrays; the scorer wants Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_rows(path: Path) -> Iterator[list[dict[str, Any]]]:
    """The input's rows in batches of ROW_BATCH; an id is filled in from the row's number."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=ROW_BATCH):
            chunk = batch.to_pylist()
            for row in chunk:
                number += 1
                if row.get("id") is None:
                    row["id"] = number
            yield chunk
        return
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise BulkInputError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise BulkInputError(f"{path}:{number}: expected a JSON object")
            if row.get("id") is None:
                row["id"] = number
            rows.append(row)
            if len(rows) == ROW_BATCH:
                yield rows
                rows = []
    if rows:
        yield rows


class RowWriter:
    """JSONL or Parquet by the output's extension; Parquet is written a batch at a time."""

    def __init__(self, path: Path):
        self.path, self._jsonl = path, path.suffix == ".jsonl"
        self._text: TextIO | None = None
        self._parquet: Any = None
        self.rows = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self.rows += len(rows)
        if self._jsonl:
            if self._text is None:
                self._text = self.path.open("w", encoding="utf-8")
            self._text.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.path, table.schema)
        self._parquet.write_table(table.cast(self._parquet.schema))

    def close(self) -> None:
        if self._text is not None:
            self._text.close()
        if self._parquet is not None:
            self._parquet.close()
        if self.rows == 0:  # an empty input still leaves an output file
            if self._jsonl:
                self.path.write_text("")
            else:
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.table({}), self.path)


class _Progress:
    """One line on stderr every few seconds: rows written and rows per second."""

    def __init__(self, enabled: bool):
        self.enabled, self.start, self.last = enabled, time.monotonic(), 0.0

    def update(self, rows: int, final: bool = False) -> None:
        now = time.monotonic()
        if self.enabled and (final or now - self.last >= 2.0):
            self.last = now
            rate = rows / max(now - self.start, 1e-9)
            print(f"electric bulk: {rows:,} rows, {rate:,.0f} rows/s", file=sys.stderr)


def run_local(args: argparse.Namespace, writer: RowWriter, progress: _Progress) -> None:
    worker = RowScorer(args.mode, args.artifact, args.variant, args.threads, args.energies,
                       args.truncate, args.lm_weight, args.length_bonus)
    try:
        for rows in read_rows(Path(args.input)):
            writer.write(worker.rows(rows))
            progress.update(writer.rows)
    finally:
        worker.scorer.close()


def run_ray(args: argparse.Namespace, writer: RowWriter, progress: _Progress) -> None:
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started:  # Ray's own INFO lines would bury the progress ones
        if args.address:
            ray.init(address=args.address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=args.cpus or os.cpu_count(), include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    try:
        source = str(Path(args.input).resolve())
        # Blocks of at most ~16 MiB of input, and enough of them for every actor to have work
        # (a small file would otherwise be one block, scored by one actor).
        blocks = max(args.workers * 4, Path(source).stat().st_size // BLOCK_BYTES)
        ds = (ray.data.read_parquet(source, override_num_blocks=blocks)
              if source.endswith(".parquet")
              else ray.data.read_json(source, lines=True, override_num_blocks=blocks))
        if source.endswith(".parquet") and Path(source).stat().st_size < SPLIT_BELOW_BYTES:
            # A Parquet file splits only at its row groups, and a small one often has one:
            # cut it into blocks (cheap at this size; a large file has row groups enough).
            ds = ds.repartition(blocks)
        # One CPU is left to Ray Data's own tasks (listing and reading the input): actors
        # holding every CPU would leave those waiting for ever.
        total = float(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
        cpus = max(total - 1, total / 2) / args.workers
        threads = args.threads or max(1, round(cpus))
        results = ds.map_batches(
            RowScorer, batch_size=ROW_BATCH, batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=args.workers), num_cpus=cpus,
            fn_constructor_kwargs={
                "mode": args.mode, "artifact": args.artifact, "variant": args.variant,
                "threads": threads, "energies": args.energies, "truncate": args.truncate,
                "lm_weight": args.lm_weight, "length_bonus": args.length_bonus})
        for batch in results.iter_batches(batch_format="pandas", batch_size=ROW_BATCH * 4):
            records: list[dict[str, Any]] = batch.to_dict("records")  # type: ignore[union-attr]
            writer.write([{k: _plain(v) for k, v in r.items()} for r in records])
            progress.update(writer.rows)
    finally:
        if started:
            ray.shutdown()


def run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise SystemExit(f"electric bulk: --workers is {args.workers}; at least 1")
    source, out = Path(args.input), Path(args.out)
    for path, what in ((source, "input"), (out, "output")):
        if path.suffix not in (".jsonl", ".parquet"):
            raise SystemExit(f"electric bulk: the {what} {path} must end in .jsonl or .parquet")
    if not source.is_file():
        raise SystemExit(f"electric bulk: {source} does not exist")
    if args.engine == "local" and args.address:
        raise SystemExit("electric bulk: --address joins a Ray cluster; add --engine ray")
    progress = _Progress(sys.stderr.isatty() if args.progress is None else args.progress)
    with ExitStack() as stack:
        writer = RowWriter(out)
        stack.callback(writer.close)
        try:
            (run_ray if args.engine == "ray" else run_local)(args, writer, progress)
        except BulkInputError as exc:
            raise SystemExit(f"electric bulk: {source}: {exc}") from None
        except ValueError as exc:  # the scorer's refusal of a text: too long, bad type
            raise SystemExit(f"electric bulk: {source}: {exc}") from None
    progress.update(writer.rows, final=True)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("bulk", help="score a corpus or re-rank n-best lists in bulk, "
                                    "here or on Ray",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["score", "rerank"])
    p.add_argument("input", help="rows to read: .jsonl or .parquet")
    p.add_argument("out", help="rows to write: .parquet or .jsonl")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--workers", type=int, default=1,
                   help="with --engine ray: actors, each with one scorer")
    p.add_argument("--address", help="with --engine ray: a cluster to join (auto, ray://...)")
    p.add_argument("--cpus", type=int, default=0,
                   help="with --engine ray and no --address: CPUs of the local cluster "
                        "(0: all)")
    p.add_argument("--artifact", default=None,
                   help="artifact folder (default: the embedded models/electric-minilm)")
    p.add_argument("--variant", choices=["auto", "fp32", "fp16", "int8"], default="auto")
    p.add_argument("--threads", type=int, default=0,
                   help="ONNX Runtime threads per scorer (0: local all cores; Ray the "
                        "actor's CPUs)")
    p.add_argument("--energies", action="store_true", help="score: also tokens and energies")
    p.add_argument("--truncate", action="store_true",
                   help="cut texts longer than the model takes instead of stopping")
    p.add_argument("--lm-weight", type=float, default=None,
                   help="rerank: weight of the Electric score (default: the artifact's)")
    p.add_argument("--length-bonus", type=float, default=None,
                   help="rerank: per-token bonus (default: the artifact's)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress lines on stderr (default: when stderr is a terminal)")
    p.set_defaults(func=run)

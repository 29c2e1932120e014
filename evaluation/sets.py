"""Readers for the three development sets in ``shared/eval`` (SOURCES.md there describes them).

- ASR n-best lists (Common Voice, and TED-LIUM where present): ``{"id", "reference",
  "hypotheses": [str, ...]}``, hypotheses in beam order.
- Minimal pairs (Zorro): ``{"paradigm", "pair", "sentence_good", "sentence_bad"}``.
- MT candidates with MQM: ``{"seg_id", "doc", "source", "candidates": [{"system", "text",
  "mqm"}]}``; MQM 0 is best, more negative is worse.

Where they are: ``--eval-dir``, else ``$ELECTRIC_EVAL_DIR``, else ``shared/eval`` beside the
project folder (the development machine's layout); ``examples/eval`` holds a small sample.

Also the two ways a set is cut: ASR lists split into a tuning and a reporting half by a hash of
their id (stable across runs, machines and file order), and a seeded sample of minimal pairs
stratified by paradigm for quick runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ASR_FILE = "asr_nbest_commonvoice.jsonl"
ASR_TED_FILE = "asr_nbest_tedlium.jsonl"
"""A second ASR domain (lectures), read like ASR_FILE; optional: it may not be redistributed,
so the sample in examples/eval lacks it and the measure runs where the file is present."""
ZORRO_FILE = "minimal_pairs_zorro.jsonl"
MT_FILE = "mt_candidates_ted_zhen_mqm.jsonl"
FILES = {"asr": ASR_FILE, "asr_ted": ASR_TED_FILE, "zorro": ZORRO_FILE, "mt": MT_FILE}
"""The file each measure reads."""
OPTIONAL_FILES = (ASR_TED_FILE,)
"""Files a dev-set folder may lack: their measures run by default only where they are present."""
EVAL_DIR_VARIABLE = "ELECTRIC_EVAL_DIR"

# Human translations in the WMT MQM releases are named "ref", "refA", "refB", "ref-A"...: a
# re-ranker choosing between systems must not be scored on them.
HUMAN_REFERENCE = re.compile(r"^(human|ref)([-_]?[a-z0-9])?$", re.IGNORECASE)


@dataclass(frozen=True)
class AsrList:
    """One ASR dev-set n-best list with its reference (the re-ranking CLI's lists, which may
    lack one and carry scores and line numbers, are service/rerank/nbest's ``NbestList``)."""

    id: str
    reference: str
    hypotheses: tuple[str, ...]
    """Beam order, best first."""


@dataclass(frozen=True)
class MinimalPair:
    paradigm: str
    pair: int
    good: str
    bad: str


@dataclass(frozen=True)
class MtCandidate:
    system: str
    text: str
    mqm: float
    """0 best, more negative worse."""


@dataclass(frozen=True)
class MtSegment:
    seg_id: int
    doc: str
    source: str
    candidates: tuple[MtCandidate, ...]


def default_eval_dir() -> Path:
    """``$ELECTRIC_EVAL_DIR``, else ``shared/eval`` beside the project folder."""
    given = os.environ.get(EVAL_DIR_VARIABLE)
    return Path(given) if given else Path(__file__).resolve().parents[2] / "shared" / "eval"


def resolve_eval_dir(given: str | Path | None,
                     measures: Sequence[str] | None = None) -> Path:
    """The folder of the dev sets, checked to hold the files ``measures`` read (by default every
    measure whose file is not optional).

    Raises FileNotFoundError with one line naming the folder, where it came from and how to
    give another."""
    if given:
        folder, origin = Path(given), "--eval-dir"
    elif os.environ.get(EVAL_DIR_VARIABLE):
        folder, origin = default_eval_dir(), f"${EVAL_DIR_VARIABLE}"
    else:
        folder, origin = default_eval_dir(), "the default"
    how = (f"pass --eval-dir DIR or set {EVAL_DIR_VARIABLE}=DIR (examples/eval holds a small "
           "sample of each set)")
    if not folder.is_dir():
        raise FileNotFoundError(f"the dev sets' folder {folder} ({origin}) does not exist: {how}")
    if measures is None:
        measures = [m for m, name in FILES.items() if name not in OPTIONAL_FILES]
    missing = [FILES[m] for m in measures if not (folder / FILES[m]).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} ({origin}) lacks {', '.join(missing)}: {how}, or "
                                "choose the measures it has with --measures")
    return folder


def _records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise TypeError(f"{path}:{number}: expected an object, got {type(record).__name__}")
            yield record


def _field(record: dict[str, Any], key: str, path: Path) -> Any:
    if key not in record:
        raise ValueError(f"{path}: a record lacks {key!r} (has {sorted(record)})")
    return record[key]


def read_asr(path: Path) -> list[AsrList]:
    return [AsrList(id=str(_field(r, "id", path)), reference=str(_field(r, "reference", path)),
                    hypotheses=tuple(str(h) for h in _field(r, "hypotheses", path)))
            for r in _records(path)]


def read_zorro(path: Path) -> list[MinimalPair]:
    return [MinimalPair(paradigm=str(_field(r, "paradigm", path)),
                        pair=int(_field(r, "pair", path)),
                        good=str(_field(r, "sentence_good", path)),
                        bad=str(_field(r, "sentence_bad", path)))
            for r in _records(path)]


def read_mt(path: Path) -> list[MtSegment]:
    segments = []
    for r in _records(path):
        candidates = tuple(MtCandidate(system=str(_field(c, "system", path)),
                                       text=str(_field(c, "text", path)),
                                       mqm=float(_field(c, "mqm", path)))
                           for c in _field(r, "candidates", path))
        segments.append(MtSegment(seg_id=int(_field(r, "seg_id", path)), doc=str(r.get("doc", "")),
                                  source=str(r.get("source", "")), candidates=candidates))
    return segments


def is_human_reference(system: str) -> bool:
    return HUMAN_REFERENCE.match(system) is not None


def in_tuning_half(item_id: str) -> bool:
    """True for the half of the ids that weights are fitted on; the other half is reported."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < 2**63




def sample_pairs(pairs: Sequence[MinimalPair], limit: int | None, seed: int = 0
                 ) -> list[MinimalPair]:
    """At most ``limit`` pairs, spread evenly over the paradigms (seeded); all when None.

    Each paradigm gets ``limit // P`` pairs and the first ``limit % P`` paradigms (in sorted
    order) one more, so per-paradigm accuracies rest on near-equal counts. A paradigm smaller
    than its share gives all it has. The result keeps the input order.
    """
    if limit is None or limit >= len(pairs):
        return list(pairs)
    if limit <= 0:
        raise ValueError(f"limit must be positive, got {limit}")
    by_paradigm: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        by_paradigm[p.paradigm].append(i)
    names = sorted(by_paradigm)
    base, extra = divmod(limit, len(names))
    rng = random.Random(seed)
    chosen: list[int] = []
    for rank, name in enumerate(names):
        share = base + (1 if rank < extra else 0)
        members = by_paradigm[name]
        chosen += members if share >= len(members) else rng.sample(members, share)
    return [pairs[i] for i in sorted(chosen)]

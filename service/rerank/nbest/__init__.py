"""Read and write n-best lists in the formats re-ranking users already have.

One module per format family; each parses into an :class:`NbestDocument` that writes itself
back unchanged (``render(None)``) or re-ordered (``render(rankings)``). See docs/CLI.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.rerank.nbest import espnet, fairseq, jsonl, kaldi, moses, tsv
from service.rerank.nbest.document import (
    Candidate,
    NbestDocument,
    NbestFormatError,
    NbestList,
    Ranking,
    attach_references,
    read_references,
    read_text,
)
from service.rerank.nbest.kaldi import ScoreFile

FORMATS = ("jsonl", "tsv", "espnet", "kaldi", "fairseq", "moses", "marian")
"""``marian`` is ``moses``: Marian writes the same n-best layout."""

# How a --ref file is keyed for each format: Moses and fairseq number their sentences from 0,
# so line n of a plain file is sentence n; the others name their lists.
_NUMBERED_REFS = frozenset({"fairseq", "moses", "marian"})


@dataclass(frozen=True)
class ReadOptions:
    references: Path | None = None
    """A references file (see :func:`read_references`); overrides references in the file."""
    score_files: Sequence[ScoreFile] = ()
    """Kaldi only: the score files that make up the base score."""


def read_nbest(fmt: str, path: Path | str, options: ReadOptions = ReadOptions()) -> NbestDocument:
    """Parse ``path`` (``-`` for stdin) as ``fmt``; :class:`NbestFormatError` names the line."""
    if options.score_files and fmt != "kaldi":
        raise ValueError(f"score files are for the kaldi format, not {fmt}")
    name, text = read_text(path)
    doc: NbestDocument
    if fmt == "jsonl":
        doc = jsonl.parse(name, text)
    elif fmt == "tsv":
        doc = tsv.parse(name, text)
    elif fmt == "espnet":
        doc = espnet.parse(name, text)
    elif fmt == "kaldi":
        doc = kaldi.parse(name, text, options.score_files)
    elif fmt == "fairseq":
        doc = fairseq.parse(name, text)
    elif fmt in ("moses", "marian"):
        doc = moses.parse(name, text)
    else:
        raise ValueError(f"unknown n-best format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if options.references is not None:
        attach_references(doc, read_references(options.references,
                                               keyed=fmt not in _NUMBERED_REFS))
    return doc


__all__ = ["FORMATS", "Candidate", "NbestDocument", "NbestFormatError", "NbestList", "Ranking",
           "ReadOptions", "ScoreFile", "read_nbest"]

"""Reading text corpora: UTF-8 files, gzipped when named ``*.gz``, one sentence or paragraph a line.

The one place that opens a corpus file. Training (data.py) wants documents, which a blank line
ends; the Kneser-Ney LM, the n-gram cloze and calibration want the non-blank lines alone. Both
read through :func:`lines`, so a corpus reads the same to all of them.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from pathlib import Path


def lines(path: Path) -> Iterator[str]:
    """Every line of one corpus file, blank ones included, line ends kept."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        yield from f


def read_lines(paths: Iterable[Path]) -> Iterator[str]:
    """The non-blank lines of the files in turn (line ends kept)."""
    for path in paths:
        yield from (line for line in lines(path) if line.strip())


def read_documents(path: Path) -> Iterator[list[str]]:
    """Each document of a corpus file as its list of non-blank lines, stripped."""
    document: list[str] = []
    for line in lines(path):
        line = line.strip()
        if line:
            document.append(line)
        elif document:
            yield document
            document = []
    if document:
        yield document

"""What every n-best format reads into, and the line plumbing the line-based formats share.

A reader returns an :class:`NbestDocument`: the lists it found (text, base score and line of
every hypothesis; the reference where the file has one) and whatever it needs to write the file
back. ``render(None)`` gives the file exactly as it was read; ``render(rankings)`` gives it with
each list re-ordered best first (and, where the format has room, the Electric score added).
Everything a reader does not understand it keeps verbatim. The line-based formats build on
:class:`LineDocument`, which groups hypothesis lines into lists and moves them as blocks.

Files are split on ``\\n`` only, endings kept: ``str.splitlines`` would also split on the form
feeds and Unicode line separators that transcripts do contain, and break the round trip.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from service.schemas import RankedHypothesis

Ranking = Sequence[RankedHypothesis]
"""One list's hypotheses, best first; ``index`` is the hypothesis's position as read."""


class NbestFormatError(ValueError):
    """An input file that cannot be read as the format says; names the file and line."""

    def __init__(self, path: str, line: int | None, problem: str):
        self.path, self.line, self.problem = path, line, problem
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {problem}")


@dataclass
class Candidate:
    text: str
    """What gets scored."""
    base_score: float | None
    """The system's own log-domain score in nats, higher = better; None when the file has none."""
    line: int
    """1-based line where the hypothesis starts (for messages)."""


@dataclass
class NbestList:
    id: str
    candidates: list[Candidate] = field(default_factory=list)
    reference: str | None = None
    line: int = 0


class NbestDocument(Protocol):
    name: str
    """The file as messages name it."""
    lists: list[NbestList]

    def render(self, rankings: Sequence[Ranking] | None = None) -> str:
        """The file again; re-ordered (one ranking per list, in ``lists`` order) when given."""
        ...


def read_text(path: Path | str) -> tuple[str, str]:
    """(name for messages, content) of a UTF-8 file, or of stdin for ``-``."""
    if str(path) == "-":
        return "<stdin>", sys.stdin.buffer.read().decode("utf-8")
    try:
        return str(path), Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NbestFormatError(str(path), None, f"not UTF-8 text ({exc.reason} at byte "
                                                f"{exc.start})") from None


def split_lines(text: str) -> list[str]:
    """Lines with their endings; split on ``\\n`` only."""
    lines = text.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    if lines[-1]:
        out.append(lines[-1])
    return out


def body(line: str) -> str:
    """A line without its ending (``\\n`` or ``\\r\\n``)."""
    return line.removesuffix("\n").removesuffix("\r")


def ending(line: str) -> str:
    return line[len(body(line)):]


def content_lines(lines: Sequence[str]) -> Iterator[tuple[int, str]]:
    """(index, line without its ending) of every line that is not blank."""
    for at, line in enumerate(lines):
        content = body(line)
        if content.strip():
            yield at, content


def parse_score(name: str, line: int, value: str, what: str) -> float:
    """A finite float, or an error naming the file, line and field."""
    try:
        number = float(value)
    except ValueError:
        raise NbestFormatError(name, line, f"{what} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise NbestFormatError(name, line, f"{what} {value!r} is not finite")
    return number


def number_text(value: float) -> str:
    """How the writers print a number they add: enough digits to re-rank from, no more."""
    return format(value, ".8g")


Edit = Callable[[int, RankedHypothesis, list[str]], list[str]]
"""(list index, the hypothesis's ranking entry, its lines as read) -> the lines to write."""


def permute_blocks(lines: Sequence[str], blocks: Sequence[Sequence[tuple[int, int]]],
                   rankings: Sequence[Ranking] | None, edit: Edit | None = None) -> str:
    """Write ``lines`` with each list's hypothesis blocks re-ordered.

    ``blocks[i][j]`` is the ``[start, stop)`` line range of list i's hypothesis j. The places
    a list's blocks occupy stay where they are; the best hypothesis goes into the first, the
    next into the second, and so on, so lines between blocks (headers, source lines, comments)
    do not move. ``edit`` may rewrite a block on its way (a new feature, extra columns).
    """
    if rankings is None:
        return "".join(lines)
    if len(rankings) != len(blocks):
        raise ValueError(f"{len(rankings)} rankings for {len(blocks)} lists")
    replace: dict[int, tuple[int, list[str]]] = {}
    for i, (slots, ranking) in enumerate(zip(blocks, rankings)):
        if sorted(r.index for r in ranking) != list(range(len(slots))):
            raise ValueError(f"list {i}: the ranking does not cover its {len(slots)} hypotheses")
        for (start, stop), ranked in zip(slots, ranking):
            a, b = slots[ranked.index]
            moved = list(lines[a:b])
            replace[start] = (stop, edit(i, ranked, moved) if edit else moved)
    out: list[str] = []
    at = 0
    while at < len(lines):
        if at in replace:
            stop, new = replace[at]
            out.extend(new)
            at = stop
        else:
            out.append(lines[at])
            at += 1
    return "".join(out)


@dataclass
class LineDocument:
    """A file whose hypotheses are blocks of its lines, grouped into lists by an id.

    The line-based formats (TSV, Moses, fairseq, Kaldi) subclass it with what they need to
    write themselves back; as it stands it writes the blocks re-ordered, lines unchanged.
    """

    name: str
    lines: list[str]
    lists: list[NbestList] = field(default_factory=list)
    blocks: list[list[tuple[int, int]]] = field(default_factory=list)
    """Per list, the ``[start, stop)`` line range of each hypothesis, as :func:`permute_blocks`
    takes them."""
    _by_id: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def add(self, list_id: str, candidate: Candidate, at: int) -> int:
        """File ``candidate``, the line at index ``at``, under ``list_id`` (a new list on the
        id's first hypothesis); returns the list's index."""
        i = self._by_id.get(list_id)
        if i is None:
            i = self._by_id[list_id] = len(self.lists)
            self.lists.append(NbestList(id=list_id, line=candidate.line))
            self.blocks.append([])
        self.lists[i].candidates.append(candidate)
        self.blocks[i].append((at, at + 1))
        return i

    def render(self, rankings: Sequence[Ranking] | None = None) -> str:
        return permute_blocks(self.lines, self.blocks, rankings)


def read_references(path: Path, keyed: bool) -> dict[str, str]:
    """References by list id.

    ``keyed``: every line is ``id<TAB>text`` or ``id text`` (a Kaldi ``text`` file); otherwise
    line n (from 0) is the reference of the list whose id is ``n`` (Moses and fairseq number
    their sentences from 0).
    """
    name, text = read_text(path)
    refs: dict[str, str] = {}
    for number, line in enumerate(split_lines(text), start=1):
        content = body(line)
        if not keyed:
            refs[str(number - 1)] = content.strip()
            continue
        if not content.strip():
            continue
        sep = "\t" if "\t" in content else " "
        key, _, ref = content.partition(sep)
        if key in refs:
            raise NbestFormatError(name, number, f"a second reference for {key!r}")
        refs[key] = ref.strip()
    return refs


def attach_references(doc: NbestDocument, refs: dict[str, str]) -> None:
    """Set each list's reference from ``refs``; a list with none is an error, not a skip."""
    missing = [lst for lst in doc.lists if lst.id not in refs]
    if missing:
        first = missing[0]
        raise NbestFormatError(doc.name, first.line or None,
                               f"no reference for list {first.id!r} in the references file "
                               f"({len(missing)} of {len(doc.lists)} lists have none)")
    for lst in doc.lists:
        lst.reference = refs[lst.id]

"""fairseq-generate (and fairseq-interactive) output.

    S-12<TAB>source sentence
    T-12<TAB>reference sentence
    H-12<TAB>-0.4167<TAB>tokenized hypothesis
    D-12<TAB>-0.4167<TAB>detokenized hypothesis
    P-12<TAB>-0.2 -0.5 -0.6

With ``--nbest K`` each sample has K hypothesis blocks, each an ``H-`` line followed by the
``D-``, ``P-``, ``A-``, ``I-`` and ``E-`` lines of the same sample. The scores on ``H-`` and
``D-`` lines are log-probabilities in **base 2** (fairseq divides by ln 2 before printing), so
``base_score = score × ln 2`` puts them in nats, the unit of Electric's score. The text scored is
the ``D-`` line's (detokenized) where there is one, else the ``H-`` line's; the reference is
the ``T-`` line. Every other line (logs, the final BLEU line) is kept as it is.

Re-ranking re-orders each sample's hypothesis blocks within the places they held, best first,
lines unchanged: the first ``H-N`` line of each sample is then the chosen one.
"""

from __future__ import annotations

import math
import re

from service.rerank.nbest.document import (
    Candidate,
    LineDocument,
    NbestFormatError,
    body,
    parse_score,
    split_lines,
)

LINE = re.compile(r"([A-Z])-([^\t]*)\t(.*)", re.DOTALL)
ATTACHED = frozenset("DPAIE")
"""Line types that belong to the hypothesis block before them."""
LN2 = math.log(2.0)


class FairseqDocument(LineDocument):
    """Hypothesis blocks are moved with their lines unchanged."""


def _scored(name: str, number: int, kind: str, rest: str) -> tuple[float, str]:
    """(score in nats, text) of an H- or D- line's fields after the id."""
    score, sep, text = rest.partition("\t")
    if not sep:
        raise NbestFormatError(name, number, f"an {kind}- line needs a score and a text "
                                             "after the id, separated by tabs")
    return parse_score(name, number, score.strip(), f"{kind}- score") * LN2, text


def parse(name: str, text: str) -> FairseqDocument:
    doc = FairseqDocument(name, split_lines(text))
    refs: dict[str, str] = {}
    open_block: tuple[str, int] | None = None  # (sample id, list index) of the current block
    for at, raw in enumerate(doc.lines):
        number = at + 1
        match = LINE.fullmatch(body(raw))
        if not match and body(raw)[:2] in ("H-", "D-"):
            # Looks like a hypothesis but is not one: never let it pass as a log line.
            raise NbestFormatError(name, number, f"a {body(raw)[:2]} line needs the id, a tab, "
                                                 "the score, a tab and the text")
        kind, sample, rest = match.groups() if match else ("", "", "")
        sample = sample.partition("_")[0] if kind == "E" else sample  # E-<id>_<step>
        if kind in ATTACHED and open_block and open_block[0] == sample:
            i = open_block[1]
            start, _ = doc.blocks[i][-1]
            doc.blocks[i][-1] = (start, at + 1)
            if kind == "D":
                cand = doc.lists[i].candidates[-1]
                cand.base_score, cand.text = _scored(name, number, kind, rest)
            continue
        open_block = None
        if kind == "D":
            raise NbestFormatError(name, number, f"D-{sample} does not follow an H-{sample} "
                                                 "line")
        if kind == "T":
            refs[sample] = rest
        if kind != "H":
            continue
        score, hyp = _scored(name, number, kind, rest)
        open_block = (sample, doc.add(sample, Candidate(hyp, score, number), at))
    for lst in doc.lists:
        lst.reference = refs.get(lst.id)
    return doc

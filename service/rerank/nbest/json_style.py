"""How a JSON text was written, so that what we write back looks the same.

ESPnet, mlm-scoring and most JSONL producers write with Python's ``json`` module; detecting
its options (indent, ``ensure_ascii``, ``sort_keys``, separators, a final newline) from the
text lets a re-ranked file differ from its input only where the ranking changed it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import product
from typing import Any

_COMPACT = (",", ":")


@dataclass(frozen=True)
class JsonStyle:
    indent: int | str | None = None
    ensure_ascii: bool = False
    sort_keys: bool = False
    compact: bool = False
    """``(",", ":")`` separators instead of ``(", ", ": ")`` (one-line texts only)."""
    newline: str = ""
    """What follows the closing bracket: ``"\\n"`` or nothing."""

    def dumps(self, value: Any) -> str:
        if self.indent is not None:
            # json's default item separator with an indent is "," (no trailing space).
            separators = _COMPACT if self.compact else (",", ": ")
        else:
            separators = _COMPACT if self.compact else (", ", ": ")
        return json.dumps(value, indent=self.indent, ensure_ascii=self.ensure_ascii,
                          sort_keys=self.sort_keys, separators=separators) + self.newline

    @classmethod
    def detect(cls, text: str, value: Any) -> JsonStyle:
        """The first style that reproduces ``text`` from ``value``; a close guess otherwise."""
        stripped = text.rstrip("\r\n")
        newline = text[len(stripped):]
        indent = _indent_of(stripped)
        candidates = [cls(indent, ascii_, sort, compact, newline)
                      for ascii_, sort, compact in product((False, True), repeat=3)]
        for style in candidates:
            if style.dumps(value) == text:
                return style
        return cls(indent, ensure_ascii=stripped.isascii() and "\\u" in stripped,
                   compact=indent is None and ", " not in stripped and ": " not in stripped,
                   newline=newline)


def _indent_of(text: str) -> int | str | None:
    """The leading whitespace of the first indented line, as json's ``indent`` argument."""
    lines = text.split("\n")
    if len(lines) < 2:
        return None
    line = lines[1]
    lead = line[:len(line) - len(line.lstrip(" \t"))]
    if not lead:
        return 0
    return len(lead) if set(lead) == {" "} else lead

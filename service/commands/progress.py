"""A one-line progress report on stderr for the long CLI commands.

tqdm is not a serving dependency, and a bar needs little: a count, a rate and, when the total
is known, a percentage, redrawn in place at most twice a second. Off unless stderr is a
terminal (logs and CI get no carriage returns), unless asked for.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from typing_extensions import Self

_EVERY_S = 0.5


class Progress:
    def __init__(self, unit: str, total: int | None = None, enabled: bool | None = None,
                 stream: TextIO | None = None):
        self.unit, self.total, self.done = unit, total, 0
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._start = self._last = time.monotonic()
        self._shown = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self._enabled and now - self._last >= _EVERY_S:
            self._last = now
            self._draw(now, "\r")

    def close(self) -> None:
        """The final count, on its own line, if anything was shown or asked for."""
        if self._enabled and (self._shown or self.done):
            self._draw(time.monotonic(), "\r")
            self._stream.write("\n")
            self._stream.flush()

    def _draw(self, now: float, prefix: str) -> None:
        elapsed = max(now - self._start, 1e-9)
        text = f"{self.done:,} {self.unit}"
        if self.total:
            text += f" of {self.total:,} ({100 * self.done / self.total:.0f}%)"
        text += f", {self.done / elapsed:,.0f} {self.unit}/s, {elapsed:.0f} s"
        self._stream.write(f"{prefix}{text}   ")
        self._stream.flush()
        self._shown = True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

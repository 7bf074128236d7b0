"""Progress reporting for long jobs (convert, perplexity), with no dependency: plain text on stderr.

Library code calls a `Progress` (whose methods do nothing); the CLI passes a `TextProgress`, which
redraws one line per bar with a carriage return on a terminal, and prints whole lines otherwise.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """The events a long job reports. Every method is a no-op here."""

    def stage(self, label: str, total: int) -> None:
        """A new bar: `total` steps of `label` (e.g. 30 blocks, 64 sequences)."""

    def step(self, done: int, note: str = "") -> None:
        """`done` steps of the current bar are finished."""

    def message(self, text: str) -> None:
        """A line of information between bars."""


class TextProgress(Progress):
    def __init__(self, stream=None, width: int = 24):
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label, self.total, self.start, self.open = "", 0, time.perf_counter(), False

    def stage(self, label: str, total: int) -> None:
        self._end_line()
        self.label, self.total, self.start = label, max(total, 1), time.perf_counter()
        self.step(0)

    def step(self, done: int, note: str = "") -> None:
        filled = int(self.width * min(done, self.total) / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"{self.label} [{bar}] {done}/{self.total} {time.perf_counter() - self.start:6.1f} s {note}".rstrip()
        if self.tty:
            self.stream.write("\r" + line + "\033[K")
            self.open = done < self.total
            if not self.open:
                self.stream.write("\n")
        elif done == self.total:          # not a terminal (a log file): one line per finished bar
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self._end_line()
        self.stream.write(text + "\n")
        self.stream.flush()

    def _end_line(self) -> None:
        if self.open:
            self.stream.write("\n")
            self.open = False

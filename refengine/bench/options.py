"""Parsing the benchmark tools' arguments: comma lists of sizes, and argparse with one-line errors.

`refengine bench` (click) and the scripts in tools/ (argparse) read lists the same way and fail the same
way: one line on stderr naming the flag, exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from refengine.bench.errors import BenchError


def parse_int_list(text: str, flag: str, minimum: int = 1) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; duplicates dropped, order kept. A BenchError naming `flag` otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v < minimum for v in values):
        raise BenchError(f"{flag} {text!r}: give a comma-separated list of integers >= {minimum} (e.g. 1,8,32)")
    return list(dict.fromkeys(values))


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (`prog: error: ...`, exit 2) instead of a usage block."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def run_tool(main, prog: str, argv=None) -> int:
    """Run a tool's main(argv); a BenchError (or any RefengineError) becomes one line and exit code 2."""
    from refengine.errors import RefengineError
    try:
        return main(argv) or 0
    except RefengineError as e:
        sys.stderr.write(f"{prog}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130

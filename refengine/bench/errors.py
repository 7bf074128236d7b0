"""The benchmark's one user-facing error type (the CLI turns it into one line and exit code 2)."""

from refengine.errors import RefengineError


class BenchError(RefengineError):
    """A benchmark that cannot run as asked: an unknown shape, a bad list, a workload that does not fit."""

"""Running a click command in-process, and the check every user mistake must pass: exactly one
"PROG: error: ..." line on stderr naming what was wrong, exit code 2, no traceback."""

from __future__ import annotations

from refengine.cli.main import cli
from refengine.cli.options import run_click


def run(argv, capsys, command=cli, prog="refengine"):
    """(exit code, stdout, stderr) of `prog argv`."""
    code = run_click(command, argv, prog_name=prog)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    lines = [line for line in err.splitlines() if ": error:" in line]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]

"""Shared pieces of the benchmark tests: the tools/ scripts imported by path (tools/ is not a package),
the `refengine` CLI run in-process, and the one-line error check."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from refengine.cli.main import cli
from refengine.cli.options import run_click

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    """tools/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool_main(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run a tool the way its `if __name__ == "__main__"` does: (exit code, stdout, stderr)."""
    from refengine.bench.options import run_tool
    module = load_tool(name)
    try:
        code = run_tool(module.main, name, argv)
    except SystemExit as e:                  # argparse usage errors exit from inside parse_args
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_click(cli, argv, prog_name="refengine")
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err: str, prog: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]

"""The `refengine` command group."""

from __future__ import annotations

import sys

import click

from refengine import __version__
from refengine.cli.bench import bench
from refengine.cli.chat import chat
from refengine.cli.convert import convert
from refengine.cli.diff import diff
from refengine.cli.eval import eval_group
from refengine.cli.generate import generate
from refengine.cli.options import run_click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="refengine")
def cli():
    """refengine: run Llama-family models from NumPy (and, soon, CUDA kernels)."""


cli.add_command(bench)
cli.add_command(chat)
cli.add_command(convert)
cli.add_command(diff)
cli.add_command(eval_group)
cli.add_command(generate)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_click(cli, argv, prog_name="refengine"))


if __name__ == "__main__":
    main()

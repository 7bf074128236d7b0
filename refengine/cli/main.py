"""The `refengine` command group."""

from __future__ import annotations

import click

from refengine import __version__
from refengine.cli.chat import chat
from refengine.cli.generate import generate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="refengine")
def main():
    """refengine: run Llama-family models from NumPy (and, soon, CUDA kernels)."""


main.add_command(chat)
main.add_command(generate)

if __name__ == "__main__":
    main()

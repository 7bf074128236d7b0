"""`refengine diff MODEL --prompts FILE`: where refengine and a reference implementation part, layer by layer.

Exit codes: 0 everything within tolerance, 1 something past it (usable in CI), 2 a user error (one line).
"""

from __future__ import annotations

import json
import logging

import click

from refengine.cli.options import handle_user_errors
from refengine.diff.tolerances import DTYPES
from refengine.ops import BACKENDS


@click.command()
@click.argument("model")
@click.option("--prompts", "prompts_file", required=True, metavar="FILE",
              help="One prompt per line, or a .jsonl file of {\"prompt\": ...} / {\"messages\": [...]} objects.")
@click.option("--against", default="transformers", show_default=True, metavar="transformers|DUMP.npz",
              help="The reference: transformers on the same weights (run in a child process), or a dump "
                   "written by any implementation (format: docs/diff.md).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32", show_default=True,
              help="Precision of the weights on both sides and of the reference's arithmetic "
                   "(refengine computes in float32).")
@click.option("--backend", type=click.Choice(BACKENDS), default="numpy", show_default=True)
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=16, show_default=True,
              help="Greedy tokens to compare after each prompt.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--atol", type=click.FloatRange(min=0), default=None, help="Replace the table's absolute tolerance.")
@click.option("--rtol", type=click.FloatRange(min=0), default=None, help="Replace the table's relative tolerance.")
@click.option("--chat/--raw", default=True, show_default=True,
              help="Render prompt strings as a user message with the chat template, or feed them as raw text.")
@click.option("--chat-template", default=None, help="Built-in template name or .jinja/.json file.")
@handle_user_errors
def diff(model, prompts_file, against, dtype, backend, max_new_tokens, as_json, atol, rtol, chat, chat_template):
    """Compare refengine with transformers (or a DUMP.npz) on MODEL: per layer max |Δ|, relative error and
    cosine, the logits (max |Δ|, KL, top-1 agreement) and the greedy continuations.

    MODEL is `demo`, a GGUF file, a Hugging Face directory or hub id.
    """
    from refengine.diff import compare, read_prompts
    from refengine.diff.render import render
    logging.basicConfig(level=logging.WARNING, format="refengine: %(levelname)s: %(message)s")
    prompts = read_prompts(prompts_file)
    report = compare(model, prompts, against=against, dtype=dtype, max_new_tokens=max_new_tokens, chat=chat,
                     atol=atol, rtol=rtol, backend=backend, chat_template=chat_template,
                     progress=lambda message: click.echo(message, err=True))
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else render(report))
    return 0 if report.ok else 1

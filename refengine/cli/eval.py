"""`refengine eval ppl MODEL --data FILE`: perplexity of a model or workspace on a text."""

from __future__ import annotations

import json

import click

from refengine.cli.options import handle_user_errors
from refengine.ops import BACKENDS


@click.group(name="eval")
def eval_group():
    """Measure a model (or a workspace) on data."""


@eval_group.command()
@click.argument("model")
@click.option("--data", required=True,
              help="A .txt / .jsonl file, python-reference (built in: the Python Language Reference), "
                   "or a hub dataset.")
@click.option("--seqlen", type=click.IntRange(min=2), default=512, show_default=True)
@click.option("--max-chunks", type=click.IntRange(min=1), default=None, help="Score at most N chunks.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@handle_user_errors
def ppl(model, data, seqlen, max_chunks, backend, as_json):
    """Perplexity of MODEL on non-overlapping SEQLEN-token chunks of --data."""
    from refengine.model.loader import load_model
    from refengine.quant.calib import load_texts
    from refengine.quant.eval import eval_model, perplexity
    from refengine.quant.progress import TextProgress
    texts, description = load_texts(data)              # a bad --data fails before the model loads
    loaded = load_model(model)
    ids = loaded.tokenizer.encode("\n\n".join(texts))
    result = perplexity(eval_model(loaded, backend), ids, seqlen, max_chunks, TextProgress())
    if as_json:
        click.echo(json.dumps({"model": model, "data": description, **vars(result)}))
    else:
        click.echo(f"perplexity {result.perplexity:.4f} on {result.tokens} tokens ({result.chunks} chunks of "
                   f"{seqlen}) of {description}")

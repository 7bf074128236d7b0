"""`refengine generate MODEL PROMPT`: stream one completion to stdout."""

from __future__ import annotations

import click

from refengine.cli.chat import tp_option
from refengine.cli.options import (handle_user_errors, load_pipeline, model_options, pop_generation_config,
                                   sampling_options)


@click.command()
@model_options
@sampling_options
@click.argument("prompt")
@click.option("--raw", is_flag=True, help="Feed PROMPT as plain text, without the chat template.")
@tp_option
@handle_user_errors
def generate(model, prompt, raw, backend, chat_template, session_len, tp, **kwargs):
    """Generate a reply to PROMPT (a user message, or raw text with --raw) with MODEL.

    MODEL is `demo` (the embedded SmolLM2-135M-Instruct), a GGUF file, a Hugging Face directory or hub id.
    """
    gen_config = pop_generation_config(kwargs)
    pipe = load_pipeline(model, backend, chat_template, session_len, tp)
    last = None
    try:
        for last in pipe.stream(prompt, gen_config, do_preprocess=not raw):
            click.echo(last.text, nl=False)
    finally:
        pipe.close()                                # with --tp: the rank processes end here
    click.echo("")
    if last is not None:
        click.echo(f"[{last.input_token_len} prompt tokens, {last.generate_token_len} generated, "
                   f"finish_reason={last.finish_reason}]", err=True)

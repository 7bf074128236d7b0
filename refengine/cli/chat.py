"""`refengine chat MODEL`: a streaming terminal chat.

Type a message and press Enter; `end` starts a new conversation, `exit` (or Ctrl-D) quits.
The conversation so far is sent with each turn (the engine's stateful sessions will keep it on the
model side instead).
"""

from __future__ import annotations

import click

from refengine.cli.options import (handle_user_errors, load_pipeline, model_options, pop_generation_config,
                                   sampling_options)


def read_line() -> str | None:
    try:
        return input("\n>>> ")
    except EOFError:
        return None


@click.command()
@model_options
@sampling_options
@handle_user_errors
def chat(model, backend, chat_template, session_len, **kwargs):
    """Chat with MODEL in the terminal (`end`: new conversation, `exit`: quit).

    MODEL is `demo` (the embedded SmolLM2-135M-Instruct), a GGUF file, a Hugging Face directory or hub id.
    """
    gen_config = pop_generation_config(kwargs)
    pipe = load_pipeline(model, backend, chat_template, session_len)
    messages: list[dict] = []
    while (line := read_line()) is not None:
        if line.strip() == "exit":
            break
        if line.strip() == "end":
            messages = []
            click.echo("(new conversation)")
            continue
        if not line.strip():
            continue
        turn = messages + [{"role": "user", "content": line}]
        reply, last = "", None
        for last in pipe.stream(turn, gen_config):
            click.echo(last.text, nl=False)
            reply += last.text
        messages = turn + [{"role": "assistant", "content": reply}]
        if last is not None and last.finish_reason == "length" and \
                last.input_token_len + last.generate_token_len >= pipe.session_len:
            click.echo(f"\n(the conversation reached the session length, {pipe.session_len} tokens: "
                       f"type `end` to start a new one)")

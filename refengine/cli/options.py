"""Flags shared by the commands that run a model, and the one place user errors become exit code 2."""

from __future__ import annotations

import functools
import logging
import time

import click

from refengine.errors import RefengineError
from refengine.ops import BACKENDS
from refengine.sampling_params import GenerationConfig


def handle_user_errors(fn):
    """A RefengineError becomes one line on stderr and exit code 2 — never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RefengineError as e:
            click.echo(f"refengine: error: {e}", err=True)
            raise click.exceptions.Exit(2) from None
        except KeyboardInterrupt:
            click.echo("", err=True)
            raise click.exceptions.Exit(130) from None
    return wrapper


def model_options(fn):
    options = [
        click.argument("model"),
        click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
                     help="Op backend: numpy runs anywhere; auto picks the fastest usable one."),
        click.option("--chat-template", default=None,
                     help="Built-in template name (internlm, internlm2, llama2, llama3, chatml) or a "
                          ".jinja / .json file; replaces the model's own."),
        click.option("--session-len", type=click.IntRange(min=2), default=None,
                     help="Longest conversation in tokens (default: the model's context length)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def sampling_options(fn):
    d = GenerationConfig()
    options = [
        click.option("--max-new-tokens", type=click.IntRange(min=0), default=d.max_new_tokens, show_default=True),
        click.option("--temperature", type=click.FloatRange(0, 2), default=d.temperature, show_default=True,
                     help="0 means greedy."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=d.top_p, show_default=True),
        click.option("--top-k", type=click.IntRange(min=0), default=d.top_k, show_default=True,
                     help="0 means no top-k cut."),
        click.option("--min-p", type=click.FloatRange(0, 1), default=d.min_p, show_default=True),
        click.option("--repetition-penalty", type=click.FloatRange(0, min_open=True),
                     default=d.repetition_penalty, show_default=True),
        click.option("--seed", type=click.IntRange(min=0), default=None),
        click.option("--stop", multiple=True, help="Stop string (repeatable); trimmed from the output."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "stop")


def pop_generation_config(kwargs: dict) -> GenerationConfig:
    return GenerationConfig(**{k: kwargs.pop(k) for k in SAMPLING_KEYS})


def load_pipeline(model: str, backend: str, chat_template: str | None, session_len: int | None, tp: int = 1):
    from refengine.pipeline import Pipeline
    logging.basicConfig(level=logging.WARNING, format="refengine: %(levelname)s: %(message)s")
    start = time.perf_counter()
    click.echo(f"loading {model} ...", err=True)
    pipe = Pipeline.from_model(model, backend=backend, chat_template=chat_template, session_len=session_len, tp=tp)
    c = pipe.loaded.config
    click.echo(f"loaded {c.family} model: {c.num_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size} "
               f"from {pipe.loaded.source} in {time.perf_counter() - start:.1f} s", err=True)
    return pipe


def run_click(command: click.Command, argv: list[str] | None, prog_name: str) -> int:
    """Run a click command; a usage mistake (unknown flag, bad value, missing argument) prints ONE line
    naming the flag, `<prog>: error: ...`, and returns 2 instead of click's multi-line usage block."""
    try:
        result = command.main(args=argv, prog_name=prog_name, standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Abort:
        click.echo("", err=True)
        return 130
    except click.ClickException as e:
        click.echo(f"{prog_name}: error: {e.format_message()}", err=True)
        return e.exit_code

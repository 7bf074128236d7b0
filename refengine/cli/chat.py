"""`refengine chat MODEL_OR_WORKSPACE`: a streaming terminal chat on one interactive engine session.

Type a message and press Enter; `end` starts a new conversation, `exit` (or Ctrl-D) quits.
The conversation lives in the engine: each turn sends only the new message's tokens (the chat template
of the whole conversation, minus what the session already holds), so a turn costs its own prefill.
LMDeploy's form `refengine chat turbomind ./model` is accepted too.
"""

from __future__ import annotations

import logging
import time

import click

from refengine.cli.options import handle_user_errors, model_options, pop_generation_config, sampling_options
from refengine.config import EngineConfig
from refengine.engine.errors import SessionLengthError

ENGINE_NAMES = ("turbomind", "refengine")     # `chat ENGINE MODEL`, as LMDeploy once spelled it


def tp_option(fn):
    """--tp N. Not an EngineConfig field: it decides which model object the engine gets (refengine.parallel's
    build_model, which refuses a --tp that cannot run before any process starts)."""
    return click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True,
                        help="Tensor parallelism: split the model over this many GPUs (a power of two; with "
                             "--backend numpy, CPU processes).")(fn)


def engine_options(fn):
    """The engine's flags (LMDeploy's names); EngineConfig's defaults."""
    d = EngineConfig()
    options = [
        click.option("--cache-max-entry-count", type=click.FloatRange(0, min_open=True),
                     default=d.cache_max_entry_count, show_default=True,
                     help="KV cache size: below 1 a fraction of the memory free after the weights, "
                          "from 1 a number of blocks."),
        click.option("--cache-block-seq-len", type=click.IntRange(min=1), default=d.cache_block_seq_len,
                     show_default=True, help="Tokens per KV cache block."),
        click.option("--max-batch-size", type=click.IntRange(min=1), default=d.max_batch_size,
                     show_default=True, help="Most sequences in one engine step."),
        click.option("--max-prefill-token-num", type=click.IntRange(min=1), default=d.max_prefill_token_num,
                     show_default=True, help="Most tokens in one engine step (long prompts go in chunks)."),
        click.option("--enable-prefix-caching", is_flag=True, help="Reuse the KV blocks of common prompt prefixes."),
        tp_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


ENGINE_KEYS = ("cache_max_entry_count", "cache_block_seq_len", "max_batch_size", "max_prefill_token_num",
               "enable_prefix_caching")


def pop_engine_config(kwargs: dict, session_len: int | None) -> EngineConfig:
    return EngineConfig(session_len=session_len, **{k: kwargs.pop(k) for k in ENGINE_KEYS})


def load_chat_pipeline(model: str, backend: str, chat_template: str | None, engine_config: EngineConfig,
                       tp: int = 1):
    """The Pipeline for chat and the server; close it to stop the engine (and, with tp > 1, the rank processes)."""
    from refengine.pipeline import Pipeline
    logging.basicConfig(level=logging.WARNING, format="refengine: %(levelname)s: %(message)s")
    start = time.perf_counter()
    click.echo(f"loading {model} ...", err=True)
    pipe = Pipeline.from_model(model, backend=backend, chat_template=chat_template, engine_config=engine_config,
                               tp=tp)
    c, core = pipe.loaded.config, pipe.engine.core
    split = f", split over {tp} ranks" if tp > 1 else ""
    click.echo(f"loaded {c.family} model: {c.num_layers} layers, hidden {c.hidden_size}, vocab {c.vocab_size} "
               f"from {pipe.loaded.source}{split} in {time.perf_counter() - start:.1f} s; session_len "
               f"{pipe.session_len}, KV cache {core.block_manager.num_blocks} blocks of "
               f"{engine_config.cache_block_seq_len} tokens", err=True)
    return pipe


def read_line() -> str | None:
    try:
        return input("\n>>> ")
    except EOFError:
        return None


def split_engine_name(model: str, path: str | None) -> str:
    """`chat MODEL` or `chat ENGINE MODEL` -> MODEL."""
    if path is None:
        return model
    if model not in ENGINE_NAMES:
        raise click.UsageError(f"got two arguments {model!r} {path!r}: the first must be an engine name "
                               f"({', '.join(ENGINE_NAMES)}) or give only the model")
    return path


@click.command()
@model_options
@click.argument("path", required=False, metavar="[MODEL]")
@sampling_options
@engine_options
@handle_user_errors
def chat(model, path, backend, chat_template, session_len, tp, **kwargs):
    """Chat with MODEL in the terminal (`end`: new conversation, `exit`: quit).

    MODEL is `demo` (the embedded SmolLM2-135M-Instruct), a GGUF file, a Hugging Face directory or hub id;
    `chat turbomind MODEL` works too.
    """
    gen_config = pop_generation_config(kwargs)
    pipe = load_chat_pipeline(split_engine_name(model, path), backend, chat_template,
                              pop_engine_config(kwargs, session_len), tp)
    try:
        ChatLoop(pipe.engine, gen_config).run()
    finally:
        pipe.close()                                # with --tp: the rank processes end here, not at exit


class ChatLoop:
    """One interactive session; `end` replaces it with a fresh one."""

    def __init__(self, engine, gen_config):
        self.engine = engine
        self.gen_config = gen_config
        self.session_id = engine.new_session_id()
        self.started = False

    def run(self) -> None:
        while (line := read_line()) is not None:
            command = line.strip()
            if command == "exit":
                break
            if command == "end":
                self.new_session()
            elif command:
                self.turn(line)
        self.engine.end_session(self.session_id)

    def new_session(self) -> None:
        self.engine.end_session(self.session_id)
        self.session_id, self.started = self.engine.new_session_id(), False
        click.echo("(new conversation)")

    def turn(self, message: str) -> None:
        last = None
        try:
            for last in self.engine.stream(self.session_id, message, self.gen_config,
                                           sequence_start=not self.started, sequence_end=False):
                click.echo(last.text, nl=False)
        except SessionLengthError as e:
            self.report_full(str(e))
            return
        self.started = True
        if last is not None and last.finish_detail:
            self.report_full(last.finish_detail)

    def report_full(self, why: str) -> None:
        click.echo(f"\n({why}: type `end` to start a new conversation)")

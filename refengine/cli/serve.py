"""`refengine-serve`: the HTTP server and its clients, with LMDeploy's command names.

    refengine-serve api_server MODEL_OR_WORKSPACE [--server-port 23333] [--api-keys K] [--tp N] [engine flags]
    refengine-serve api_client http://localhost:23333 [--api-key K] [--session-id N]
    refengine-serve webui http://localhost:23333 [--server-port 6006] [--api-key K]
"""

from __future__ import annotations

import logging
import os
import sys

import click

from refengine.cli.chat import engine_options, load_chat_pipeline, pop_engine_config
from refengine.cli.options import handle_user_errors, model_options, run_click
from refengine.server import defaults

LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """Serve a model over HTTP (OpenAI-compatible and LMDeploy-compatible), or talk to a server."""


def server_options(fn):
    options = [
        click.option("--server-name", default="0.0.0.0", show_default=True, help="Address to listen on."),
        click.option("--server-port", type=click.IntRange(0, 65535), default=23333, show_default=True),
        click.option("--instance-num", type=click.IntRange(min=1), default=None,
                     help="LMDeploy's older name for --max-batch-size (used when that flag is not given)."),
        click.option("--model-name", default=None, help="Name in /v1/models (default: from MODEL)."),
        click.option("--api-keys", multiple=True, help="API key clients must send as 'Authorization: Bearer KEY' "
                                                       "on /v1 routes (repeatable, or comma-separated)."),
        click.option("--allow-origins", multiple=True, default=("*",), show_default=True,
                     help="Origins allowed by CORS (repeatable; '' turns CORS off)."),
        click.option("--max-concurrent-requests", type=click.IntRange(min=1), default=defaults.MAX_CONCURRENT_REQUESTS,
                     show_default=True, help="Generation requests in flight; beyond it: 429 with Retry-After."),
        click.option("--max-body-size", type=click.IntRange(min=1024), default=defaults.MAX_BODY_SIZE,
                     show_default=True, help="Largest request body in bytes; beyond it: 413."),
        click.option("--drain-timeout", type=click.FloatRange(min=0), default=defaults.DRAIN_TIMEOUT, show_default=True,
                     help="On SIGTERM / Ctrl-C, seconds to let requests in flight finish before cancelling them."),
        click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="WARNING",
                     show_default=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.command("api_server")
@model_options
@engine_options
@server_options
@handle_user_errors
def api_server(model, backend, chat_template, session_len, server_name, server_port, tp, instance_num, model_name,
               api_keys, allow_origins, max_concurrent_requests, max_body_size, drain_timeout, log_level, **kwargs):
    """Serve MODEL (`demo`, a workspace, GGUF file, HF directory or hub id) over HTTP.

    OpenAI routes (/v1/chat/completions, /v1/completions, /v1/models), LMDeploy's /v1/chat/interactive and
    /v1/encode, /health, /metrics, and interactive API docs at /.
    """
    source = click.get_current_context().get_parameter_source("max_batch_size")
    if instance_num is not None and source is not click.core.ParameterSource.COMMANDLINE:
        kwargs["max_batch_size"] = instance_num
    logging.basicConfig(level=log_level.upper(), format="refengine: %(levelname)s: %(name)s: %(message)s")
    logging.getLogger().setLevel(log_level.upper())
    pipe = load_chat_pipeline(model, backend, chat_template, pop_engine_config(kwargs, session_len), tp)
    from refengine.server.app import run_api_server
    try:
        run_api_server(pipe.engine, server_name, server_port, model_name=model_name or default_name(model),
                       api_keys=split_keys(api_keys), allow_origins=split_keys(allow_origins),
                       max_concurrent_requests=max_concurrent_requests, max_body_size=max_body_size,
                       drain_timeout=drain_timeout)
    finally:
        pipe.close()


def default_name(model: str) -> str:
    """A local path names the model by its last component; `demo` or a hub id as given."""
    return os.path.basename(os.path.normpath(model)) if os.path.exists(model) else model


def split_keys(values: tuple[str, ...]) -> tuple[str, ...]:
    """Repeated and comma-separated values, blanks dropped."""
    return tuple(k.strip() for v in values for k in v.split(",") if k.strip())


@cli.command("api_client")
@click.argument("url")
@click.option("--api-key", default=None, help="Sent as 'Authorization: Bearer KEY'.")
@click.option("--session-id", type=int, default=None, help="Interactive session id (default: a new one).")
@handle_user_errors
def api_client(url, api_key, session_id):
    """Chat in the terminal with the api_server at URL (its /v1/chat/interactive sessions)."""
    from refengine.server.api_client import run_api_client
    run_api_client(url, api_key=api_key, session_id=session_id)


@cli.command("webui")
@click.argument("url")
@click.option("--server-name", default="0.0.0.0", show_default=True, help="Address the web UI listens on.")
@click.option("--server-port", type=click.IntRange(0, 65535), default=6006, show_default=True)
@click.option("--api-key", default=None, help="Key for the api_server (kept on the web UI's side).")
@handle_user_errors
def webui(url, server_name, server_port, api_key):
    """Serve a chat web page that talks to the api_server at URL."""
    from refengine.server.webui_server import run_webui
    run_webui(url, server_name, server_port, api_key=api_key)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_click(cli, argv, prog_name="refengine-serve"))


if __name__ == "__main__":
    main()

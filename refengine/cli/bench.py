"""`refengine bench generation|throughput MODEL`: LMDeploy's profile_generation / profile_throughput, through
the engine's public API (Engine.stream_infer), on random prompt ids. docs/bench.md has the details.

    refengine bench generation ./ws --batch-sizes 1,8,32 --prompt-tokens 128 --output-tokens 128 --json gen.json
    refengine bench throughput ./ws --num-requests 256 --concurrency 256 --json tp.json
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import click

from refengine.bench.errors import BenchError
from refengine.cli.chat import tp_option
from refengine.cli.options import handle_user_errors
from refengine.errors import RefengineError
from refengine.ops import BACKENDS


class IntList(click.ParamType):
    """A comma-separated list of positive integers: '1,8,32'."""
    name = "N[,N...]"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        from refengine.bench.options import parse_int_list
        flag = f"--{param.name.replace('_', '-')}" if param else "list"
        try:
            return tuple(parse_int_list(value, flag))
        except RefengineError as e:
            self.fail(str(e)[len(flag) + 1:], param, ctx)       # click names the flag itself


def engine_options(fn):
    """MODEL, the backend, the engine's settings (LMDeploy's names), sampling, outputs."""
    options = [
        click.argument("model"),
        click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True),
        tp_option,
        click.option("--cache-max-entry-count", type=click.FloatRange(0, min_open=True), default=0.8,
                     show_default=True, help="KV cache: fraction of free memory (< 1) or a number of blocks."),
        click.option("--max-batch-size", type=click.IntRange(min=1), default=None,
                     help="Sequences per step (default: the largest batch / the concurrency)."),
        click.option("--session-len", type=click.IntRange(min=2), default=None,
                     help="Tokens a session may hold (default: the model's context, if the cache holds it)."),
        click.option("--max-prefill-token-num", type=click.IntRange(min=1), default=8192, show_default=True),
        click.option("--cache-block-seq-len", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--lookahead/--no-lookahead", default=True, show_default=True,
                     help="Queue decode step n+1 before step n's tokens reach the host (with CUDA graphs)."),
        click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True,
                     help="Untimed rounds first (short outputs: kernels compiled, CUDA graphs captured)."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--temperature", type=click.FloatRange(0, 2), default=0.0, show_default=True,
                     help="0: greedy."),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True),
        click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--label", default=None, help="Name of this run in the JSON (plots use it)."),
        click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None),
        click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True), default=None),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group(name="bench")
def bench():
    """Benchmark the engine as users see it (LMDeploy's profile_generation / profile_throughput)."""


@bench.command()
@engine_options
@click.option("--batch-sizes", type=IntList(), default="1,8,32", show_default=True)
@click.option("--prompt-tokens", type=IntList(), default="128", show_default=True)
@click.option("--output-tokens", type=IntList(), default="128", show_default=True)
@handle_user_errors
def generation(model, batch_sizes, prompt_tokens, output_tokens, **kw):
    """Fixed batches: for each batch size (and prompt / output length), BATCH requests sent at once, each
    generating exactly --output-tokens tokens (ignore_eos). First-token latency, decode tokens/s, per-token
    latency, peak memory."""
    from refengine.bench.generation import COLUMNS, GenerationOptions, run_generation, with_floor
    _check_outputs(kw)
    opts = GenerationOptions(batch_sizes, prompt_tokens, output_tokens, kw["warmup"], kw["seed"], _sampling(kw))
    with _engine(model, kw, max(batch_sizes)) as (engine, meta):
        rows = [with_floor(row, meta) for row in run_generation(engine, opts, lambda r: _progress(r, "batch_size"))]
    _finish("generation", meta, {"cases": len(rows)}, rows, COLUMNS, kw)


@bench.command()
@engine_options
@click.option("--num-requests", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=256, show_default=True,
              help="Requests in flight at most.")
@click.option("--prompt-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Median prompt length of the synthetic spread.")
@click.option("--output-tokens", type=click.IntRange(min=1), default=128, show_default=True,
              help="Median output length of the synthetic spread.")
@click.option("--len-sigma", type=click.FloatRange(0), default=0.7, show_default=True,
              help="Lognormal sigma of both lengths (0: every request the median).")
@click.option("--dataset", type=click.Path(dir_okay=False), default=None,
              help="A ShareGPT-style json instead of the synthetic spread.")
@handle_user_errors
def throughput(model, num_requests, concurrency, prompt_tokens, output_tokens, len_sigma, dataset, **kw):
    """Offline serving: --num-requests requests of spread lengths (seeded), at most --concurrency at once.
    Requests/s, output and total tokens/s, first-token latency."""
    from refengine.bench.throughput import COLUMNS, run_throughput
    _check_outputs(kw)
    if dataset is not None and not Path(dataset).is_file():     # before minutes of loading, not after
        raise BenchError(f"--dataset {dataset}: no such file")
    with _engine(model, kw, concurrency) as (engine, meta):
        requests, workload = _workload(engine, num_requests, prompt_tokens, output_tokens, len_sigma, dataset,
                                       kw["seed"])
        row = run_throughput(engine, requests, concurrency, kw["warmup"], _sampling(kw))
    _finish("throughput", meta, workload, [row], COLUMNS, kw)


# ---------------------------------------------------------------- helpers

def _sampling(kw):
    from refengine.sampling_params import GenerationConfig
    return GenerationConfig(temperature=kw["temperature"], top_p=kw["top_p"], top_k=kw["top_k"])


def _check_outputs(kw) -> None:
    """--json / --csv must be writable where they point: found out before the run, not after it."""
    for flag, path in (("--json", kw["json_path"]), ("--csv", kw["csv_path"])):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise BenchError(f"{flag} {path}: the directory {Path(path).parent} does not exist")


@contextlib.contextmanager
def _engine(model: str, kw: dict, batch: int):
    """(engine, meta) built from the flags; the engine (and with --tp, its rank processes) closed afterwards."""
    from refengine.bench.device import copy_bandwidth_gbps, device_name, is_gpu
    from refengine.bench.meta import run_meta
    from refengine.config import EngineConfig
    from refengine.engine.engine import Engine
    from refengine.model.loader import load_model
    from refengine.parallel import build_model
    logging.basicConfig(level=logging.WARNING, format="refengine: %(levelname)s: %(message)s")
    config = EngineConfig(session_len=kw["session_len"], max_batch_size=kw["max_batch_size"] or batch,
                          cache_max_entry_count=kw["cache_max_entry_count"],
                          cache_block_seq_len=kw["cache_block_seq_len"],
                          max_prefill_token_num=kw["max_prefill_token_num"], lookahead=kw["lookahead"])
    click.echo(f"loading {model} (--backend {kw['backend']}, --tp {kw['tp']}) ...", err=True)
    loaded = load_model(model)
    lm = build_model(loaded, kw["backend"], kw["tp"])        # a bad --tp is refused here, before any process
    try:
        xp = lm.ops.xp
        backend = "cupy" if is_gpu(xp) else "numpy"
        copy = copy_bandwidth_gbps(xp)                   # before the KV cache takes the free memory
        with Engine(lm, loaded.tokenizer, config) as engine:
            yield engine, run_meta(engine, model, backend, device_name(xp), copy, kw["seed"], kw["label"])
    finally:
        _close_model(lm)


def _close_model(model) -> None:
    """Stop a --tp model's rank processes (a plain LlamaModel holds none)."""
    close = getattr(model, "close", None)
    if close is not None:
        close()


def _workload(engine, n, prompt_median, output_median, sigma, dataset, seed):
    from refengine.bench.workloads import sharegpt_requests, spread_requests
    if dataset is not None:
        requests = sharegpt_requests(dataset, n, engine.tokenizer, seed, engine.session_len)
        return requests, {"workload": f"ShareGPT-style {dataset}, first turns"}
    requests = spread_requests(n, prompt_median, output_median, sigma, engine.model.cfg.vocab_size, seed)
    return requests, {"workload": f"synthetic lognormal: prompt median {prompt_median}, output median "
                                  f"{output_median}, sigma {sigma}, clipped to [median/8, median*8]"}


def _progress(row: dict, key: str) -> None:
    click.echo(f"  {key} {row[key]}: {row['decode_tokens_per_s']:.1f} decode tok/s, first token "
               f"{row['first_token_ms_mean']:.1f} ms", err=True)


def _finish(kind: str, meta: dict, extra: dict, rows: list[dict], columns, kw) -> None:
    from refengine.bench.report import format_table, write_csv, write_json
    meta = {**meta, **extra}
    click.echo(f"{meta['label']}: {meta['model']} on {meta['device']}, {meta['weight_type']}"
               + (f" g{meta['group_size']}" if meta["group_size"] else "")
               + (f", copy {meta['copy_GBps']:.0f} GB/s" if meta["copy_GBps"] else "")
               + f"; KV cache {meta['engine']['kv_blocks']} blocks, session_len {meta['engine']['session_len']}"
               + (f"; {meta['workload']}" if "workload" in meta else ""))
    click.echo(format_table(rows, columns))
    if kw["json_path"]:
        write_json(kw["json_path"], {"kind": kind, "meta": meta, "rows": rows})
    if kw["csv_path"]:
        write_csv(kw["csv_path"], rows)


"""`refengine bench generation`: LMDeploy's profile_generation. For each (batch, prompt, output) case, `batch`
requests of `prompt` random ids are sent at once and each generates exactly `output` tokens.

Per case:
    first-token latency   submission → first token, per request: mean, p50, p90, p99 (ms)
    decode tokens/s       tokens that arrived after the last request's first token / the time from then to
                          the last token: the decoding rate with the whole batch running (prefill excluded)
    floor, % of floor     the bandwidth bound on decode tokens/s (weights + KV read once a step at the measured
                          copy rate; GPU only) and the share of it the decode rate reached
    output tokens/s       all output tokens / submission → last token (prefill included; LMDeploy's number)
    per-token latency     the gaps between a request's tokens: p50, p90, p99 (ms)
    peak memory           see device.py

Before each case, `warmup` runs of the same requests with at most WARMUP_TOKENS outputs compile the kernels
and capture the batch's CUDA graph, so the case measures steady state.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from refengine.bench.device import PeakMemory, is_gpu
from refengine.bench.meta import decode_floor_tokens_per_s
from refengine.bench.timing import RequestTiming, check_complete, latency_stats, run_requests
from refengine.bench.workloads import BenchRequest, check_fits, fixed_requests
from refengine.sampling_params import GenerationConfig

WARMUP_TOKENS = 4

# shared with throughput.py: (row key, header, format spec), see report.format_table
FIRST_TOKEN_COLUMNS = [("first_token_ms_mean", "1st token ms mean", ".1f"), ("first_token_ms_p50", "p50", ".1f"),
                       ("first_token_ms_p90", "p90", ".1f"), ("first_token_ms_p99", "p99", ".1f")]
PEAK_MEMORY_COLUMN = ("peak_memory_gb", "peak mem GB", ".2f")

COLUMNS = [("batch_size", "batch", "d"), ("prompt_tokens", "prompt", "d"), ("output_tokens", "output", "d"),
           *FIRST_TOKEN_COLUMNS,
           ("decode_tokens_per_s", "decode tok/s", ".1f"), ("output_tokens_per_s", "output tok/s", ".1f"),
           ("floor_tokens_per_s", "floor tok/s", ".0f"), ("percent_of_floor", "% of floor", ".1f"),
           ("token_latency_ms_p50", "ms/token p50", ".2f"), ("token_latency_ms_p90", "p90", ".2f"),
           ("token_latency_ms_p99", "p99", ".2f"), PEAK_MEMORY_COLUMN]


@dataclass(frozen=True)
class GenerationOptions:
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    prompt_tokens: tuple[int, ...] = (128,)
    output_tokens: tuple[int, ...] = (128,)
    warmup: int = 1
    seed: int = 0
    sampling: GenerationConfig = GenerationConfig(temperature=0.0)

    def cases(self) -> list[tuple[int, int, int]]:
        return list(itertools.product(self.batch_sizes, self.prompt_tokens, self.output_tokens))


def summarize(timings: list[RequestTiming], case: tuple[int, int, int], memory: dict) -> dict:
    batch, prompt, output = case
    start = min(t.submitted for t in timings)
    end = max(t.finished for t in timings)
    decode_from = max(t.arrivals[0] for t in timings)           # every request is decoding from here on
    decode_tokens = sum(t.tokens_after(decode_from) for t in timings)
    total = sum(t.output_tokens for t in timings)
    row = {"batch_size": batch, "prompt_tokens": prompt, "output_tokens": output, "requests": len(timings),
           "total_output_tokens": total, "wall_s": end - start, "output_tokens_per_s": total / (end - start),
           "decode_tokens_per_s": decode_tokens / (end - decode_from) if end > decode_from else float("nan"),
           **latency_stats(timings), **memory}
    row["peak_memory_gb"] = peak_gigabytes(memory)
    return row


def with_floor(row: dict, meta: dict) -> dict:
    """The row with the bandwidth bound of its decode phase (meta.decode_floor_tokens_per_s at the mean context
    while decoding, prompt + output / 2) and the share of it reached; None on the CPU."""
    floor = decode_floor_tokens_per_s(meta, row["batch_size"], row["prompt_tokens"] + row["output_tokens"] / 2)
    return {**row, "floor_tokens_per_s": floor,
            "percent_of_floor": None if floor is None else 100 * row["decode_tokens_per_s"] / floor}


def peak_gigabytes(memory: dict) -> float | None:
    """The one number a table shows: device memory in use on a GPU, resident memory on the CPU."""
    used = memory.get("device_used_peak_bytes", memory.get("rss_peak_bytes"))
    return None if used is None else used / 1e9


def warm_up(engine, requests: list[BenchRequest], sampling: GenerationConfig, rounds: int,
            concurrency: int | None = None) -> None:
    short = [BenchRequest(r.prompt_ids, min(r.output_tokens, WARMUP_TOKENS)) for r in requests]
    for _ in range(rounds):
        run_requests(engine, short, sampling, concurrency)


def measure(engine, requests: list[BenchRequest], sampling: GenerationConfig, warmup: int,
            concurrency: int | None = None) -> tuple[list[RequestTiming], dict]:
    """Warm up on the first `concurrency` requests, then run them all once, timed and under PeakMemory:
    (timings, peak memory). Shared by both benchmarks; a request that fits nowhere or ends short raises."""
    xp = engine.model.ops.xp
    check_fits(requests, engine.session_len)
    if is_gpu(xp):
        xp.get_default_memory_pool().free_all_blocks()     # so the pool's peak is this run's
    warm_up(engine, requests[:concurrency], sampling, warmup, concurrency)
    with PeakMemory(xp) as peak:
        timings = run_requests(engine, requests, sampling, concurrency)
    check_complete(timings, requests)
    return timings, peak.result()


def run_case(engine, case: tuple[int, int, int], opts: GenerationOptions) -> dict:
    batch, prompt, output = case
    requests = fixed_requests(batch, prompt, output, engine.model.cfg.vocab_size, opts.seed)
    timings, memory = measure(engine, requests, opts.sampling, opts.warmup)
    return summarize(timings, case, memory)


def run_generation(engine, opts: GenerationOptions, progress=lambda row: None) -> list[dict]:
    rows = []
    for case in opts.cases():
        rows.append(run_case(engine, case, opts))
        progress(rows[-1])
    return rows

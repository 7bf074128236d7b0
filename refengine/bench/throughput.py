"""`refengine bench throughput`: LMDeploy's profile_throughput. N requests of spread lengths (workloads.py),
at most `concurrency` in flight: a new one is sent as soon as one finishes, as a loaded server sees them.

    requests/s          N / wall (first submission → last token)
    output tokens/s     Σ output tokens / wall
    total tokens/s      Σ (prompt + output) tokens / wall
    first-token latency submission → first token (queueing for a free slot not included: a request is
                        submitted when the concurrency gate lets it in, as LMDeploy's clients do)
    per-token latency   gaps between a request's tokens
"""

from __future__ import annotations

from refengine.bench.device import PeakMemory, is_gpu
from refengine.bench.generation import peak_gigabytes, warm_up
from refengine.bench.timing import check_complete, flat_stats, run_requests
from refengine.bench.workloads import BenchRequest, check_fits
from refengine.sampling_params import GenerationConfig

COLUMNS = [("num_requests", "requests", "d"), ("concurrency", "concurrency", "d"), ("wall_s", "wall s", ".1f"),
           ("requests_per_s", "req/s", ".3f"), ("output_tokens_per_s", "output tok/s", ".1f"),
           ("total_tokens_per_s", "total tok/s", ".1f"), ("first_token_ms_mean", "1st token ms mean", ".1f"),
           ("first_token_ms_p50", "p50", ".1f"), ("first_token_ms_p90", "p90", ".1f"),
           ("first_token_ms_p99", "p99", ".1f"), ("token_latency_ms_p50", "ms/token p50", ".2f"),
           ("token_latency_ms_p99", "p99", ".2f"), ("peak_memory_gb", "peak mem GB", ".2f")]


def run_throughput(engine, requests: list[BenchRequest], concurrency: int, warmup: int = 1,
                   sampling: GenerationConfig = GenerationConfig(temperature=0.0)) -> dict:
    xp = engine.model.ops.xp
    check_fits(requests, engine.session_len)
    if is_gpu(xp):
        xp.get_default_memory_pool().free_all_blocks()
    warm_up(engine, requests[:concurrency], sampling, warmup, concurrency)
    with PeakMemory(xp) as peak:
        timings = run_requests(engine, requests, sampling, concurrency)
    check_complete(timings, requests)
    start = min(t.submitted for t in timings)
    wall = max(t.finished for t in timings) - start
    prompt_total = sum(t.prompt_tokens for t in timings)
    output_total = sum(t.output_tokens for t in timings)
    memory = peak.result()
    return {"num_requests": len(requests), "concurrency": concurrency, "completed": len(timings),
            "prompt_tokens": prompt_total, "output_tokens": output_total, "wall_s": wall,
            "requests_per_s": len(timings) / wall, "output_tokens_per_s": output_total / wall,
            "total_tokens_per_s": (prompt_total + output_total) / wall,
            **flat_stats("first_token_ms", [t.first_token_latency for t in timings], 1e3),
            **flat_stats("token_latency_ms", [g for t in timings for g in t.token_gaps()], 1e3),
            **memory, "peak_memory_gb": peak_gigabytes(memory)}

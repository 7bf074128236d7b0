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

from refengine.bench.generation import FIRST_TOKEN_COLUMNS, PEAK_MEMORY_COLUMN, measure, peak_gigabytes
from refengine.bench.timing import latency_stats
from refengine.bench.workloads import BenchRequest
from refengine.sampling_params import GenerationConfig

COLUMNS = [("num_requests", "requests", "d"), ("concurrency", "concurrency", "d"), ("wall_s", "wall s", ".1f"),
           ("requests_per_s", "req/s", ".3f"), ("output_tokens_per_s", "output tok/s", ".1f"),
           ("total_tokens_per_s", "total tok/s", ".1f"), *FIRST_TOKEN_COLUMNS,
           ("token_latency_ms_p50", "ms/token p50", ".2f"), ("token_latency_ms_p99", "p99", ".2f"),
           PEAK_MEMORY_COLUMN]


def run_throughput(engine, requests: list[BenchRequest], concurrency: int, warmup: int = 1,
                   sampling: GenerationConfig = GenerationConfig(temperature=0.0)) -> dict:
    timings, memory = measure(engine, requests, sampling, warmup, concurrency)
    start = min(t.submitted for t in timings)
    wall = max(t.finished for t in timings) - start
    prompt_total = sum(t.prompt_tokens for t in timings)
    output_total = sum(t.output_tokens for t in timings)
    return {"num_requests": len(requests), "concurrency": concurrency, "completed": len(timings),
            "prompt_tokens": prompt_total, "output_tokens": output_total, "wall_s": wall,
            "requests_per_s": len(timings) / wall, "output_tokens_per_s": output_total / wall,
            "total_tokens_per_s": (prompt_total + output_total) / wall,
            **latency_stats(timings), **memory, "peak_memory_gb": peak_gigabytes(memory)}

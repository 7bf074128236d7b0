"""Timing one request as a user sees it, and the statistics over many.

    submitted ──(queueing + prefill)──► first token ──gap──► token ──gap──► ... ──► last token
    first-token latency = first arrival − submitted          per-token latency = each gap / tokens it brought

Times are time.perf_counter() taken when an output reaches the caller (on the GPU backend the engine has
already read the sampled ids back from the device, so an arrival implies the step finished).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

import numpy as np

from refengine.bench.errors import BenchError

PERCENTILES = (50, 90, 99)


@dataclass
class RequestTiming:
    submitted: float
    prompt_tokens: int
    arrivals: list[float] = field(default_factory=list)     # perf_counter of each output that carried tokens
    counts: list[int] = field(default_factory=list)         # tokens in that output
    finish_reason: str | None = None

    @property
    def output_tokens(self) -> int:
        return sum(self.counts)

    @property
    def first_token_latency(self) -> float:
        return self.arrivals[0] - self.submitted if self.arrivals else math.nan

    @property
    def finished(self) -> float:
        return self.arrivals[-1] if self.arrivals else self.submitted

    def token_gaps(self) -> list[float]:
        """Seconds per token after the first (an output of k tokens counts its gap / k, k times)."""
        gaps = []
        for before, now, k in zip(self.arrivals, self.arrivals[1:], self.counts[1:]):
            gaps += [(now - before) / k] * k
        return gaps

    def tokens_after(self, t: float) -> int:
        """Tokens that arrived strictly after time t."""
        return sum(k for a, k in zip(self.arrivals, self.counts) if a > t)


async def timed_request(engine, prompt_ids: list[int], gen_config) -> RequestTiming:
    """Stream one stateless request through Engine.stream_infer, stamping every output that brings tokens."""
    timing = RequestTiming(time.perf_counter(), len(prompt_ids))
    async for out in engine.stream_infer(engine.new_session_id(), input_ids=prompt_ids, gen_config=gen_config):
        if out.token_ids:
            timing.arrivals.append(time.perf_counter())
            timing.counts.append(len(out.token_ids))
        if out.finish_reason is not None:
            timing.finish_reason = out.finish_reason
    return timing


def run_requests(engine, requests, sampling, concurrency: int | None = None) -> list[RequestTiming]:
    """Send every request (BenchRequest: prompt_ids, output_tokens) through the engine, at most `concurrency`
    in flight (None: all at once), each with ignore_eos and max_new_tokens = its output_tokens."""
    async def one(request, gate):
        cfg = sampling.updated(max_new_tokens=request.output_tokens, ignore_eos=True)
        async with gate:
            return await timed_request(engine, request.prompt_ids, cfg)

    async def all_of_them():
        gate = asyncio.Semaphore(concurrency or len(requests))
        return await asyncio.gather(*(one(r, gate) for r in requests))
    return asyncio.run(all_of_them())


def check_complete(timings: list[RequestTiming], requests) -> None:
    """Every request made exactly its output_tokens (ignore_eos): else the numbers would mean something else."""
    for i, (t, r) in enumerate(zip(timings, requests)):
        if t.output_tokens != r.output_tokens:
            raise BenchError(f"request {i} made {t.output_tokens} tokens, not {r.output_tokens} "
                             f"(finish_reason {t.finish_reason!r}): is session_len or the KV cache too small?")


def stats(values, scale: float = 1.0) -> dict[str, float]:
    """mean, p50, p90, p99 of `values` × scale (NaN for none: a statistic of nothing is not zero)."""
    a = np.asarray(values, dtype=np.float64) * scale
    if a.size == 0:
        return {"mean": math.nan, **{f"p{p}": math.nan for p in PERCENTILES}}
    return {"mean": float(a.mean()), **{f"p{p}": float(np.percentile(a, p)) for p in PERCENTILES}}


def flat_stats(prefix: str, values, scale: float = 1.0) -> dict[str, float]:
    """stats() with keys `<prefix>_mean`, `<prefix>_p50`, ...: one flat row for tables and CSV."""
    return {f"{prefix}_{k}": v for k, v in stats(values, scale).items()}


def latency_stats(timings: list[RequestTiming]) -> dict[str, float]:
    """The latency columns both benchmarks report: first_token_ms_* and token_latency_ms_* (milliseconds)."""
    return {**flat_stats("first_token_ms", [t.first_token_latency for t in timings], 1e3),
            **flat_stats("token_latency_ms", [g for t in timings for g in t.token_gaps()], 1e3)}

"""Prometheus text-format metrics (exposition format 0.0.4), written by hand: a few counters and two
histograms kept by the server, plus gauges read from the engine when /metrics is scraped.

    refengine_http_requests_total{route,status}       counter    every HTTP request, by route template
    refengine_prompt_tokens_total                     counter    input tokens of finished generation requests
    refengine_generation_tokens_total                 counter    tokens generated for them
    refengine_requests_in_flight                      gauge      generation requests admitted, not finished
    refengine_queue_depth                             gauge      sequences waiting in the engine's scheduler
    refengine_sequences_running                       gauge      sequences in the running batch
    refengine_sessions                                gauge      engine sessions (running or parked interactive)
    refengine_kv_blocks_used / _total                 gauge      KV cache blocks in use / in the cache
    refengine_engine_steps_total, _preemptions_total  counter    the engine's own counters
    refengine_time_to_first_token_seconds             histogram  request admitted → first generated token
    refengine_request_duration_seconds                histogram  whole generation requests, first byte in to last out

A client that disconnects is counted with status 499 (nginx's "client closed request").
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from aiohttp import web

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/chat/interactive")
CLIENT_CLOSED = 499


class Histogram:
    def __init__(self, buckets: tuple[float, ...]):
        self.buckets = buckets
        self.counts = [0] * len(buckets)      # per bucket, not cumulative (summed when rendered)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def lines(self, name: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts):
            running += n
            out.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.sum:.6f}", f"{name}_count {self.count}"]
        return out


class Metrics:
    """What the server counts itself (event-loop thread only: no locks needed)."""

    def __init__(self):
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.duration = Histogram(REQUEST_BUCKETS)

    def count_tokens(self, prompt: int, generated: int) -> None:
        self.prompt_tokens += prompt
        self.generation_tokens += generated

    def middleware(self):
        @web.middleware
        async def record(request: web.Request, handler):
            start, status = time.perf_counter(), CLIENT_CLOSED
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as e:
                status = e.status
                raise
            except (asyncio.CancelledError, ConnectionResetError):
                status = CLIENT_CLOSED
                raise
            finally:
                route = _route(request)
                self.requests[route, status] += 1
                if route in GENERATION_ROUTES:
                    self.duration.observe(time.perf_counter() - start)
        return record

    def render(self, engine, in_flight: int) -> str:
        core = engine.core
        blocks = core.block_manager
        lines = _family("refengine_http_requests_total", "counter", "HTTP requests by route and status",
                        [f'refengine_http_requests_total{{route="{_escape(r)}",status="{s}"}} {n}'
                         for (r, s), n in sorted(self.requests.items())])
        for name, kind, help_, value in [
            ("refengine_prompt_tokens_total", "counter", "prompt tokens of finished requests", self.prompt_tokens),
            ("refengine_generation_tokens_total", "counter", "generated tokens", self.generation_tokens),
            ("refengine_requests_in_flight", "gauge", "generation requests in flight", in_flight),
            ("refengine_queue_depth", "gauge", "sequences waiting in the scheduler", len(core.scheduler.waiting)),
            ("refengine_sequences_running", "gauge", "sequences in the running batch", len(core.scheduler.running)),
            ("refengine_sessions", "gauge", "engine sessions held", len(core.sessions)),
            ("refengine_kv_blocks_used", "gauge", "KV cache blocks in use", blocks.num_blocks - blocks.num_free_blocks),
            ("refengine_kv_blocks_total", "gauge", "KV cache blocks", blocks.num_blocks),
            ("refengine_engine_steps_total", "counter", "engine steps run", core.stats["steps"]),
            ("refengine_engine_preemptions_total", "counter", "sequences preempted", core.stats["preempted"])]:
            lines += _family(name, kind, help_, [f"{name} {value}"])
        lines += _family("refengine_time_to_first_token_seconds", "histogram", "admission to first token",
                         self.ttft.lines("refengine_time_to_first_token_seconds"))
        lines += _family("refengine_request_duration_seconds", "histogram", "generation request duration",
                         self.duration.lines("refengine_request_duration_seconds"))
        return "\n".join(lines) + "\n"


def _family(name: str, kind: str, help_: str, samples: list[str]) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples]


def _route(request: web.Request) -> str:
    """The route template (never the raw path: unknown paths would grow the label set without bound)."""
    resource = request.match_info.route.resource if request.match_info.route else None
    return resource.canonical if resource is not None else "unmatched"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

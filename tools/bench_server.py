"""What the HTTP layer costs: the same requests through the api_server and straight into the engine.

    python tools/bench_server.py [--model demo] [--backend auto] [--concurrency 64] [--max-tokens 64] [--json]

Both paths run in this one process on one Engine (same backend, same KV cache):

  throughput   C clients at once, each streaming one greedy chat completion of exactly --max-tokens tokens
               (ignore_eos): tokens/s of the engine driven directly (C concurrent stream_infer calls) vs
               the same C requests as SSE streams from /v1/chat/completions (aiohttp clients in a second
               process, as real clients are: in this one they would take the GIL from the server and the
               engine; the server on its own event loop thread, as `refengine-serve api_server` runs it);
               --rounds alternating rounds, the best of each path reported
  first token  one request alone, --repeats times (median): the engine's time to its first output
               (queue + prefill + first sample) vs HTTP time to the first byte of the stream body

The server answers only after the first token, so time to first byte = engine first token + HTTP overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import aiohttp
from aiohttp import web

from refengine.config import EngineConfig
from refengine.errors import RefengineError
from refengine.pipeline import Pipeline
from refengine.sampling_params import GenerationConfig
from refengine.server.app import RUNNER_OPTIONS, create_app

TOPICS = ["the ocean", "volcanoes", "owls", "bridges", "tea", "comets", "glaciers", "bees"]


def prompts(count: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Tell me fact number {i + 1} about {TOPICS[i % len(TOPICS)]}."}]
            for i in range(count)]


# ---------------------------------------------------------------- the engine, driven directly

async def engine_request(engine, messages, cfg) -> tuple[int, float]:
    """(tokens generated, seconds to the first output)."""
    start, first, tokens = time.perf_counter(), None, 0
    async for out in engine.stream_infer(engine.new_session_id(), messages, cfg):
        first = first if first is not None else time.perf_counter() - start
        tokens += len(out.token_ids)
    return tokens, first


async def engine_batch(engine, batch, cfg) -> tuple[int, float]:
    start = time.perf_counter()
    results = await asyncio.gather(*(engine_request(engine, m, cfg) for m in batch))
    return sum(t for t, _ in results), time.perf_counter() - start


# ---------------------------------------------------------------- the same through HTTP

class BackgroundServer:
    def __init__(self, app: web.Application):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.runner = web.AppRunner(app, **RUNNER_OPTIONS)
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result()

    async def _start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


async def http_request(session, url: str, messages, max_tokens: int) -> tuple[int, float]:
    """(completion tokens from the usage chunk, seconds to the first byte of the body)."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            first = first if first is not None else time.perf_counter() - start
            if line.startswith(b"data: {") and b'"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return tokens, first


async def http_batch(url: str, batch, max_tokens: int) -> tuple[int, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        results = await asyncio.gather(*(http_request(session, url, m, max_tokens) for m in batch))
        return sum(t for t, _ in results), time.perf_counter() - start


async def http_first_bytes(url: str, messages, max_tokens: int, repeats: int) -> list[float]:
    async with aiohttp.ClientSession() as session:
        return [(await http_request(session, url, messages, max_tokens))[1] for _ in range(repeats)]


def client_batch(url: str, batch, max_tokens: int) -> tuple[int, float]:
    """http_batch, run in the client process."""
    return asyncio.run(http_batch(url, batch, max_tokens))


def client_first_bytes(url: str, messages, max_tokens: int, repeats: int) -> list[float]:
    return asyncio.run(http_first_bytes(url, messages, max_tokens, repeats))


# ---------------------------------------------------------------- the run

def measure(pipe: Pipeline, args) -> dict:
    engine = pipe.engine
    cfg = GenerationConfig(max_new_tokens=args.max_tokens, temperature=0, ignore_eos=True)
    batch, single = prompts(args.concurrency), prompts(1)[0]
    server = BackgroundServer(create_app(engine, model_name=args.model, max_concurrent_requests=args.concurrency + 8))
    clients = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    try:
        asyncio.run(engine_batch(engine, batch[:2], cfg.updated(max_new_tokens=2)))          # warm up both paths
        clients.submit(client_batch, server.url, batch[:2], 2).result()
        rounds = []                    # engine and HTTP alternate, so that a busy machine hurts both alike
        for _ in range(args.rounds):
            rounds.append((asyncio.run(engine_batch(engine, batch, cfg)),
                           clients.submit(client_batch, server.url, batch, args.max_tokens).result()))
        e_first = [asyncio.run(engine_request(engine, single, cfg.updated(max_new_tokens=1)))[1]
                   for _ in range(args.repeats)]
        h_first = clients.submit(client_first_bytes, server.url, single, 1, args.repeats).result()
    finally:
        clients.shutdown()
        server.stop()
    (e_tokens, e_time), (h_tokens, h_time) = rounds[-1]
    return {"model": args.model, "backend": args.backend, "concurrency": args.concurrency,
            "max_tokens": args.max_tokens, "prompt_tokens": len(pipe.tokenizer.encode_chat(single)),
            "rounds": args.rounds, "engine_tokens_per_s": max(t / s for (t, s), _ in rounds),
            "http_tokens_per_s": max(t / s for _, (t, s) in rounds), "engine_tokens": e_tokens, "http_tokens": h_tokens,
            "engine_first_token_ms": 1e3 * statistics.median(e_first),
            "http_first_byte_ms": 1e3 * statistics.median(h_first)}


def table(r: dict) -> str:
    rows = [("throughput, tok/s", r["engine_tokens_per_s"], r["http_tokens_per_s"]),
            ("first token / byte, ms (alone)", r["engine_first_token_ms"], r["http_first_byte_ms"])]
    head = (f"bench_server: {r['model']} on {r['backend']}, {r['concurrency']} clients × {r['max_tokens']} tokens, "
            f"prompt {r['prompt_tokens']} tokens\n{'':32}{'engine':>10}{'HTTP':>10}{'HTTP/engine':>13}")
    return "\n".join([head] + [f"{name:32}{e:10.1f}{h:10.1f}{h / e:13.2f}" for name, e, h in rows])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds per path (the best is reported)")
    p.add_argument("--repeats", type=int, default=5, help="single requests for the first-token medians")
    p.add_argument("--cache-max-entry-count", type=float, default=0.5)
    p.add_argument("--chat-template", default=None, help="for a model without one (e.g. random-weight workspaces)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args()
    try:
        pipe = Pipeline.from_model(args.model, backend=args.backend, chat_template=args.chat_template,
                                   engine_config=EngineConfig(cache_max_entry_count=args.cache_max_entry_count,
                                                              max_batch_size=max(128, args.concurrency)))
        try:
            pipe.tokenizer.encode_chat(prompts(1)[0])          # a model without a chat template: say so now
            result = measure(pipe, args)
        finally:
            pipe.close()
    except RefengineError as e:
        sys.exit(f"bench_server: error: {e}")
    print(json.dumps(result, indent=1) if args.json else table(result))


if __name__ == "__main__":
    main()

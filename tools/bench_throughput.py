"""Offline serving throughput of the engine (LMDeploy's profile_throughput, on synthetic requests).

    python tools/bench_throughput.py [MODEL] [--num-prompts 24] [--concurrency 24] [--prompt-len 16 192]
        [--output-len 16 64] [--seed 0] [--backend numpy] [--max-batch-size 128] [--enable-prefix-caching]

N requests with a seeded spread of prompt lengths (random token ids) and output lengths (ignore_eos, so
each generates exactly its length), at most --concurrency in flight, through Engine.stream_infer.
Reports requests/s, output tokens/s, prompt tokens/s and first-token latency (submission to the first
output: queueing + prefill) p50/p99, plus the per-token decode latency. The default (the demo model on
the NumPy backend) takes about 30 s on an idle 2-core CPU (several times that on a busy one).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time

import numpy as np

from refengine.config import EngineConfig
from refengine.engine.engine import Engine
from refengine.sampling_params import GenerationConfig


def make_requests(n: int, prompt_len, output_len, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(prompt_len[0], prompt_len[1] + 1, n)
    outputs = rng.integers(output_len[0], output_len[1] + 1, n)
    low = min(256, vocab // 2)                       # stay clear of the control tokens at the start
    return [(rng.integers(low, vocab, int(p)).tolist(), int(o)) for p, o in zip(lengths, outputs)]


async def run_one(engine: Engine, i: int, prompt: list[int], n_out: int, gate: asyncio.Semaphore) -> dict:
    cfg = GenerationConfig(temperature=0, max_new_tokens=n_out, ignore_eos=True)
    async with gate:
        start = time.perf_counter()
        times = []
        async for out in engine.stream_infer(("bench", i), input_ids=prompt, gen_config=cfg):
            times.append(time.perf_counter())
    return dict(first=times[0] - start, decode=np.diff(times).tolist(), tokens=len(times), prompt=len(prompt))


async def run_all(engine: Engine, requests, concurrency: int) -> tuple[list[dict], float]:
    gate = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    results = await asyncio.gather(*(run_one(engine, i, p, o, gate) for i, (p, o) in enumerate(requests)))
    return results, time.perf_counter() - start


def report(args, engine: Engine, results: list[dict], wall: float) -> None:
    first = np.array([r["first"] for r in results]) * 1e3
    decode = np.array([d for r in results for d in r["decode"]]) * 1e3
    out_tokens = sum(r["tokens"] for r in results)
    in_tokens = sum(r["prompt"] for r in results)
    core = engine.core
    print(f"model {args.model}, backend {args.backend}, {platform.processor() or platform.machine()}, "
          f"{args.num_prompts} requests, concurrency {args.concurrency}, prompt {args.prompt_len[0]}-"
          f"{args.prompt_len[1]} tokens, output {args.output_len[0]}-{args.output_len[1]} tokens, seed {args.seed}")
    print(f"engine: max_batch_size {engine.config.max_batch_size}, {core.block_manager.num_blocks} KV blocks of "
          f"{engine.config.cache_block_seq_len}, prefix caching {engine.config.enable_prefix_caching}; "
          f"{core.stats['steps']} steps, {core.stats['preempted']} preemptions; "
          f"1-min load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| wall s | requests/s | output tok/s | prompt tok/s | first token p50 ms | p99 ms | "
          "decode ms/token p50 | p99 |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {wall:.1f} | {len(results) / wall:.3f} | {out_tokens / wall:.1f} | {in_tokens / wall:.1f} | "
          f"{np.percentile(first, 50):.0f} | {np.percentile(first, 99):.0f} | "
          f"{np.percentile(decode, 50):.0f} | {np.percentile(decode, 99):.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default="demo")
    p.add_argument("--num-prompts", type=int, default=24)
    p.add_argument("--concurrency", type=int, default=24)
    p.add_argument("--prompt-len", type=int, nargs=2, default=(16, 192), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(16, 64), metavar=("MIN", "MAX"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="numpy")
    p.add_argument("--max-batch-size", type=int, default=128)
    p.add_argument("--max-prefill-token-num", type=int, default=8192)
    p.add_argument("--cache-max-entry-count", type=float, default=0.8)
    p.add_argument("--enable-prefix-caching", action="store_true")
    args = p.parse_args()
    config = EngineConfig(max_batch_size=args.max_batch_size, max_prefill_token_num=args.max_prefill_token_num,
                          cache_max_entry_count=args.cache_max_entry_count,
                          enable_prefix_caching=args.enable_prefix_caching)
    with Engine.from_model(args.model, backend=args.backend, config=config) as engine:
        engine.infer(input_ids=[300, 301, 302], gen_config=GenerationConfig(max_new_tokens=2))   # warm up
        engine.core.stats.update(steps=0, tokens=0, preempted=0, evicted=0)
        requests = make_requests(args.num_prompts, args.prompt_len, args.output_len,
                                 engine.model.cfg.vocab_size, args.seed)
        results, wall = asyncio.run(run_all(engine, requests, args.concurrency))
        report(args, engine, results, wall)


if __name__ == "__main__":
    main()

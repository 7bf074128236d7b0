"""Scheduler + block manager overhead per engine step, with no model: the host-side cost that every
step pays on top of the forward pass (target: under 1 ms at 256 running sequences).

    python tools/bench_scheduler.py [--seqs 256] [--steps 2000] [--block-size 64] [--prefix-caching]

A steady state of `--seqs` running sequences: each generates a seeded random number of tokens, and a
finished one is replaced at once by a new request (a prompt that is prefilled in chunks), so admission,
chunked prefill, block growth and freeing are all in the timed loop. Timed per step:
    schedule   Scheduler.schedule() (block manager predicates and actions included)
    update     counters catch up, full blocks sealed (prefix caching), one token appended per
               sampling sequence, finished turns released — what EngineCore.step does around the model
Not timed: the model (there is none), the sampler and detokenizer (per-token output work).
"total cpu" is the same as "total" in this thread's CPU time: what it costs on a machine shared with
other work, where wall-clock times include waiting for a core.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from refengine.config import SchedulerConfig
from refengine.engine.block_manager import BlockManager
from refengine.engine.scheduler import Scheduler
from refengine.engine.sequence import Sequence


class Workload:
    def __init__(self, args):
        self.rng = np.random.default_rng(args.seed)
        self.args = args
        self.ids = iter(range(10**9))

    def new_sequence(self) -> Sequence:
        n_prompt = int(self.rng.integers(16, self.args.max_prompt + 1))
        seq = Sequence(next(self.ids), None, self.rng.integers(0, 32000, n_prompt).tolist(), 0)
        seq.start_turn([], int(self.rng.integers(16, self.args.max_output + 1)), 1 << 30, seq.seq_id)
        return seq


def step(scheduler: Scheduler, blocks: BlockManager, work: Workload) -> tuple[float, float, float, int, int]:
    c0, t0 = time.thread_time(), time.perf_counter()
    out = scheduler.schedule()
    t1 = time.perf_counter()
    for s in out.scheduled:
        seq = s.seq
        samples = s.samples
        seq.num_computed += s.num_new_tokens
        blocks.seal_computed_blocks(seq)
        if samples:
            seq.append_token(7)
            if seq.num_tokens >= seq.max_tokens:
                scheduler.finish(seq, keep=False)
                scheduler.add(work.new_sequence())
    t2, c2 = time.perf_counter(), time.thread_time()
    return t1 - t0, t2 - t1, c2 - c0, len(out.scheduled), len(out.preempted)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, default=256)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--num-blocks", type=int, default=0, help="default: enough for every sequence at its longest")
    p.add_argument("--max-prompt", type=int, default=512)
    p.add_argument("--max-output", type=int, default=256)
    p.add_argument("--max-prefill-token-num", type=int, default=8192)
    p.add_argument("--prefix-caching", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    num_blocks = args.num_blocks or args.seqs * -(-(args.max_prompt + args.max_output) // args.block_size)
    blocks = BlockManager(num_blocks, args.block_size, args.prefix_caching)
    scheduler = Scheduler(SchedulerConfig(args.seqs, args.max_prefill_token_num, 1 << 30), blocks)
    work = Workload(args)
    for _ in range(args.seqs):
        scheduler.add(work.new_sequence())
    while len(scheduler.running) < args.seqs or any(s.num_computed < s.num_prompt for s in scheduler.running):
        step(scheduler, blocks, work)                      # warm up: everyone admitted and prefilled
    rows = np.array([step(scheduler, blocks, work) for _ in range(args.steps)])
    times, cpu, scheduled, preempted = rows[:, :2] * 1e3, rows[:, 2] * 1e3, rows[:, 3], rows[:, 4]   # ms
    total = times.sum(1)
    print(f"{args.seqs} sequences, {num_blocks} blocks of {args.block_size}, prefix caching "
          f"{'on' if args.prefix_caching else 'off'}, {args.steps} steps: {scheduled.mean():.1f} scheduled "
          f"and {preempted.sum() / args.steps:.2f} preempted per step")
    for name, t in (("schedule", times[:, 0]), ("update", times[:, 1]), ("total", total), ("total cpu", cpu)):
        print(f"  {name:9s} mean {t.mean():.3f} ms   p50 {np.percentile(t, 50):.3f} ms   "
              f"p99 {np.percentile(t, 99):.3f} ms   per scheduled sequence {t.mean() / scheduled.mean() * 1e3:.2f} µs")


if __name__ == "__main__":
    main()

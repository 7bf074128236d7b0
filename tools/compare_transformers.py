"""refengine next to Hugging Face transformers on the same weights, the same random prompts, the same device,
in one process: decode speed per batch size, and offline throughput over N requests.

    python tools/compare_transformers.py /tmp/hf-fp16 --ours /tmp/ws-fp16 --batch-sizes 1,64 --json cmp.json
    python tools/compare_transformers.py /tmp/hf-fp16 --ours /tmp/ws-fp16 --batch-sizes 1 --variants sdpa \
        --throughput-requests 256 --hf-batch-size 64
    python tools/compare_transformers.py TINY_HF_DIR --device cpu --batch-sizes 1,2 --prompt-tokens 8 ...

MODEL is a Hugging Face directory (tools/make_random_workspace.py --hf-out writes one) or `demo`. --ours is
what refengine runs (a workspace of the same weights; default MODEL itself, through refengine's HF loader).

transformers rows (torch float16 on cuda, float32 on cpu; attn_implementation="sdpa"; greedy;
min_new_tokens = max_new_tokens so eos never ends a row early; token times from a streamer's put, after
the device has synchronised):
    transformers sdpa            the default dynamic KV cache
    transformers static+compile  cache_implementation="static", which makes generate torch.compile the
                                 decode step (mode reduce-overhead: CUDA graphs) on cuda; on cpu the static
                                 cache alone. If it fails, the reason is printed and the row left out.
    (--variants sdpa,static picks them; --variants '' runs refengine alone.)
refengine rows: the engine (cupy backend on cuda, numpy on cpu) through refengine/bench/generation.py —
exactly `refengine bench generation`'s measurement.

Throughput mode (--throughput-requests N): N requests of spread lengths (refengine/bench/workloads.py);
transformers runs them as static batches of --hf-batch-size in arrival order, each left-padded to its
longest prompt and generating its longest output (only each request's own output counts as tokens: the
rest is what static batching wastes; the static-cache row is left out here: every batch's new shape would
recompile it); refengine gets all N at once (continuous batching).
Transformers runs first and is freed before refengine loads, so each side has the whole device.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer

from refengine.bench.errors import BenchError
from refengine.bench.generation import GenerationOptions, run_case, summarize
from refengine.bench.meta import weight_type
from refengine.bench.options import OneLineArgumentParser, parse_int_list, run_tool
from refengine.bench.report import format_table, write_json
from refengine.bench.throughput import run_throughput
from refengine.bench.timing import RequestTiming
from refengine.bench.workloads import fixed_requests, spread_requests
from refengine.config import EngineConfig
from refengine.engine.engine import Engine
from refengine.sampling_params import GenerationConfig

COLUMNS = [("implementation", "implementation", "s"), ("mode", "mode", "s"), ("batch_size", "batch", "d"),
           ("decode_tokens_per_s", "decode tok/s", ".1f"), ("output_tokens_per_s", "output tok/s", ".1f"),
           ("first_token_ms_mean", "1st token ms", ".1f"), ("token_latency_ms_p50", "ms/token p50", ".2f"),
           ("requests_per_s", "req/s", ".2f"), ("peak_memory_gb", "peak mem GB", ".2f")]
GREEDY = GenerationConfig(temperature=0.0)


# ---------------------------------------------------------------- transformers

class ArrivalTimes(BaseStreamer):
    """generate() calls put() with the prompt, then once per step with the new tokens: stamp each step."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.seen_prompt = device, [], False

    def put(self, value):
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())

    def end(self):
        pass


def load_transformers(model: str, device: torch.device):
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if model in ("demo", "default"):
        from refengine.model.demo import DEMO_FILE, demo_gguf_path
        hf = AutoModelForCausalLM.from_pretrained(demo_gguf_path().parent, gguf_file=DEMO_FILE, dtype=dtype,
                                                  attn_implementation="sdpa")
    else:
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation="sdpa")
    return hf.to(device).eval()


def hf_generate(hf, prompts: list[list[int]], new_tokens: int, **extra) -> tuple[float, list[float], int]:
    """One static batch, left-padded: (start, per-step token times, tokens generated per row)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1
    streamer = ArrivalTimes(hf.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids.to(hf.device), attention_mask=mask.to(hf.device), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, streamer=streamer, **extra)
    return start, streamer.times, out.shape[1] - width


def torch_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"torch_peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "torch_peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}


def hf_generation_row(hf, name: str, batch: int, prompt: int, output: int, seed: int, extra: dict) -> dict:
    requests = fixed_requests(batch, prompt, output, hf.config.vocab_size, seed)
    prompts = [r.prompt_ids for r in requests]
    hf_generate(hf, prompts, output, **extra)                 # warm-up: same shapes (a static cache's too)
    if hf.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(hf.device)
    start, times, made = hf_generate(hf, prompts, output, **extra)
    if made != output or len(times) != output:
        raise BenchError(f"{name} made {made} tokens, not {output}")
    timings = [RequestTiming(start, prompt, list(times), [1] * len(times)) for _ in range(batch)]
    row = summarize(timings, (batch, prompt, output), torch_memory(hf.device))
    row["peak_memory_gb"] = row.get("torch_peak_reserved_bytes", np.nan) / 1e9
    return {"implementation": name, "mode": "generation", **row}


def hf_throughput_row(hf, name: str, requests, batch_size: int, extra: dict) -> dict:
    """Static batches in arrival order; every request is submitted at the start (as refengine's are)."""
    hf_generate(hf, [r.prompt_ids for r in requests[:batch_size]], 4, **extra)      # warm-up
    first, output_total, generated, start = [], 0, 0, time.perf_counter()
    for b in range(0, len(requests), batch_size):
        chunk = requests[b:b + batch_size]
        _, times, made = hf_generate(hf, [r.prompt_ids for r in chunk], max(r.output_tokens for r in chunk), **extra)
        first += [times[0] - start] * len(chunk)
        output_total += sum(r.output_tokens for r in chunk)
        generated += made * len(chunk)
    wall = time.perf_counter() - start
    prompt_total = sum(len(r.prompt_ids) for r in requests)
    return {"implementation": name, "mode": "throughput", "batch_size": batch_size, "num_requests": len(requests),
            "wall_s": wall, "requests_per_s": len(requests) / wall, "output_tokens_per_s": output_total / wall,
            "total_tokens_per_s": (prompt_total + output_total) / wall, "generated_tokens": generated,
            "output_tokens": output_total, "first_token_ms_mean": 1e3 * float(np.mean(first)),
            **torch_memory(hf.device)}


VARIANTS = ("sdpa", "static")


def transformers_variants(device: torch.device, chosen: list[str]) -> list[tuple[str, dict]]:
    """(row name, generate() keyword arguments) for each chosen variant."""
    static = "transformers static+compile" if device.type == "cuda" else "transformers static cache"
    table = {"sdpa": ("transformers sdpa", {}), "static": (static, {"cache_implementation": "static"})}
    return [table[v] for v in chosen]


def run_transformers(args, device: torch.device, requests) -> list[dict]:
    if not args.variants:
        return []
    hf = load_transformers(args.model, device)
    rows = []
    for name, extra in transformers_variants(device, args.variants):
        try:
            for batch in args.batch_sizes:
                rows.append(hf_generation_row(hf, name, batch, args.prompt_tokens, args.output_tokens, args.seed,
                                              extra))
                say(f"{name}, batch {batch}: {rows[-1]['decode_tokens_per_s']:.1f} decode tok/s")
            if requests and not extra:      # a static cache recompiles for every batch's new shape: sdpa only
                rows.append(hf_throughput_row(hf, name, requests, args.hf_batch_size, extra))
                say(f"{name}, throughput: {rows[-1]['output_tokens_per_s']:.1f} output tok/s")
        except Exception as e:        # noqa: BLE001  compile / OOM / a transformers version without a feature
            say(f"{name}: left out ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del hf
    free_torch(device)
    return rows


def free_torch(device: torch.device) -> None:
    gc.collect()
    if hasattr(torch, "_dynamo"):
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- refengine

def run_refengine(args, device: torch.device, requests) -> tuple[list[dict], str]:
    backend = "cupy" if device.type == "cuda" else "numpy"
    biggest = max([*args.batch_sizes, len(requests)])
    config = EngineConfig(max_batch_size=args.max_batch_size or biggest, cache_max_entry_count=args.cache_max_entry_count)
    name = f"refengine {backend}"
    rows = []
    with Engine.from_model(args.ours or args.model, backend=backend, config=config) as engine:
        wtype, group = weight_type(engine.model)
        name += f" {wtype}" + (f" g{group}" if group else "")
        opts = GenerationOptions(seed=args.seed, warmup=1, sampling=GREEDY)
        for batch in args.batch_sizes:
            row = run_case(engine, (batch, args.prompt_tokens, args.output_tokens), opts)
            rows.append({"implementation": name, "mode": "generation", **row})
            say(f"{name}, batch {batch}: {row['decode_tokens_per_s']:.1f} decode tok/s")
        if requests:
            row = run_throughput(engine, requests, len(requests), 1, GREEDY)
            rows.append({"implementation": name, "mode": "throughput", "batch_size": len(requests), **row})
            say(f"{name}, throughput: {row['output_tokens_per_s']:.1f} output tok/s")
    return rows, name


# ---------------------------------------------------------------- main

def ratios(rows: list[dict], ours: str) -> list[dict]:
    """refengine / each transformers row, same mode and batch: decode tok/s (generation), output tok/s
    (throughput)."""
    out = []
    for mine in (r for r in rows if r["implementation"] == ours):
        key = "decode_tokens_per_s" if mine["mode"] == "generation" else "output_tokens_per_s"
        for theirs in rows:
            if theirs["implementation"].startswith("transformers") and theirs["mode"] == mine["mode"] and \
                    (mine["mode"] == "throughput" or theirs["batch_size"] == mine["batch_size"]):
                out.append({"mode": mine["mode"], "batch_size": mine["batch_size"], "metric": key,
                            "versus": theirs["implementation"], "ratio": mine[key] / theirs[key]})
    return out


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv):
    p = OneLineArgumentParser(prog="compare_transformers", description=__doc__.splitlines()[0])
    p.add_argument("model", help="a Hugging Face directory, or demo")
    p.add_argument("--ours", default=None, help="what refengine runs (default: MODEL)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", default="1,64")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--output-tokens", type=int, default=128)
    p.add_argument("--throughput-requests", type=int, default=0, help="N > 0: also the throughput mode")
    p.add_argument("--hf-batch-size", type=int, default=64, help="transformers' static batch (throughput)")
    p.add_argument("--len-sigma", type=float, default=0.5, help="lognormal sigma of the throughput lengths")
    p.add_argument("--max-batch-size", type=int, default=None, help="refengine's (default: the largest needed)")
    p.add_argument("--cache-max-entry-count", type=float, default=0.8)
    p.add_argument("--variants", default="sdpa,static",
                   help="transformers rows: sdpa (dynamic cache), static (static cache + torch.compile on cuda)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.batch_sizes = parse_int_list(args.batch_sizes, "--batch-sizes")
    args.variants = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
    if not set(args.variants) <= set(VARIANTS):
        raise BenchError(f"--variants {','.join(args.variants)!r}: choose from {', '.join(VARIANTS)}")
    for flag in ("prompt_tokens", "output_tokens", "hf_batch_size"):
        if getattr(args, flag) < 1:
            raise BenchError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.model not in ("demo", "default") and not (Path(args.model) / "config.json").is_file():
        raise BenchError(f"{args.model}: not a Hugging Face directory (no config.json)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    vocab = load_vocab_size(args.model)
    requests = spread_requests(args.throughput_requests, args.prompt_tokens, args.output_tokens, args.len_sigma,
                               vocab, args.seed) if args.throughput_requests else []
    rows = run_transformers(args, device, requests)
    ours_rows, ours = run_refengine(args, device, requests)
    rows += ours_rows
    compared = ratios(rows, ours)
    print(format_table(rows, COLUMNS))
    print()
    print(format_table(compared, [("mode", "mode", "s"), ("batch_size", "batch", "d"), ("metric", "metric", "s"),
                                  ("versus", "refengine / ...", "s"), ("ratio", "ratio", ".2f")]))
    if args.json:
        write_json(args.json, {"kind": "compare", "meta": meta(args, device), "rows": rows, "ratios": compared})
    return 0


def load_vocab_size(model: str) -> int:
    """The vocabulary the random prompts draw from, read from the model's config alone: the weights are
    loaded once by each side (transformers in run_transformers, refengine in run_refengine)."""
    if model in ("demo", "default"):
        from refengine.model.demo import demo_gguf_path
        from refengine.model.gguf import GGUFMetadata, config_from_gguf, open_gguf
        path = demo_gguf_path()
        reader = open_gguf(path)            # memory-mapped: only the metadata and tensor table are read
        return config_from_gguf(GGUFMetadata(reader, path), {t.name: t for t in reader.tensors}).vocab_size
    import json
    return int(json.loads((Path(model) / "config.json").read_text())["vocab_size"])


def meta(args, device: torch.device) -> dict:
    import transformers
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"model": args.model, "ours": args.ours or args.model, "device": name, "torch": torch.__version__,
            "transformers": transformers.__version__, "prompt_tokens": args.prompt_tokens,
            "output_tokens": args.output_tokens, "throughput_requests": args.throughput_requests,
            "hf_batch_size": args.hf_batch_size, "seed": args.seed}


if __name__ == "__main__":
    sys.exit(run_tool(main, "compare_transformers"))

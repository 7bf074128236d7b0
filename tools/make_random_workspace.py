"""Write a random-weight workspace of a named Llama shape (and, with --hf-out, the same weights as a Hugging
Face directory) for benchmarks: no download, seeded, streamed one block at a time.

    python tools/make_random_workspace.py llama2-7b --dst /tmp/ws-fp16 --hf-out /tmp/hf-fp16
    python tools/make_random_workspace.py llama2-7b --dst /tmp/ws-int4 --weight-type int4 --group-size 128
    python tools/make_random_workspace.py tiny --dst /tmp/tiny

Shapes: llama2-7b, llama3-8b, internlm2-7b, 1b (TinyLlama-1.1B), tiny (refengine/bench/shapes.py). Weights,
scales and the synthetic byte-level tokenizer (exactly the shape's vocabulary, since no real tokenizer has
it; every id decodes) are described in refengine/bench/random_weights.py and synthetic_tokenizer.py.
An int4 workspace's --hf-out holds its dequantized weights in float16.

llama2-7b float16: 13.5 GB on disk (13.5 GB more with --hf-out), ~1 GB of RAM; int4 g128: 3.9 GB.
"""

from __future__ import annotations

import sys
from pathlib import Path

from refengine.bench.errors import BenchError
from refengine.bench.options import OneLineArgumentParser, run_tool
from refengine.bench.random_model import WEIGHT_TYPES, RandomModelOptions, make_random_model
from refengine.bench.shapes import SHAPES


def parse_args(argv):
    p = OneLineArgumentParser(prog="make_random_workspace", description=__doc__.splitlines()[0])
    p.add_argument("shape", help=f"one of: {', '.join(SHAPES)}")
    p.add_argument("--dst", required=True, type=Path, help="the workspace directory to create")
    p.add_argument("--weight-type", default="float16", help=f"{' | '.join(WEIGHT_TYPES)} (default float16)")
    p.add_argument("--dtype", default=None, help="float16: the same as --weight-type float16")
    p.add_argument("--group-size", type=int, default=128, help="int4 group size (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hf-out", type=Path, default=None, help="also write a Hugging Face directory here")
    p.add_argument("--force", action="store_true", help="replace an existing workspace at --dst")
    p.add_argument("--threads", type=int, default=None, help="threads filling the weights (default: CPUs)")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dtype not in (None, "float16"):
        raise BenchError(f"--dtype {args.dtype!r}: random workspaces store float16 (use --weight-type int4 for int4)")
    opts = RandomModelOptions(args.shape, args.dst, args.weight_type, args.group_size, args.seed, args.hf_out,
                              args.force, args.threads)
    say = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    s = make_random_model(opts, say)
    print(f"wrote {s.dst} ({opts.shape}, {opts.weight_type}, {s.workspace_bytes / 1e9:.2f} GB)"
          + (f" and {s.hf_out} ({s.hf_bytes / 1e9:.2f} GB)" if s.hf_out else "") + f" in {s.seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main, "make_random_workspace"))

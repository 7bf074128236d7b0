"""Shape name -> a random-weight workspace (float16 or int4), and optionally an HF directory of the same weights.

    validate                         every mistake refused before anything is written
    atomic_directory(dst)            (and atomic_directory(hf_out)): nothing half-written survives a failure
      tokenizer/                     synthetic byte-level BPE of the shape's vocabulary (synthetic_tokenizer.py);
                                     the HF directory gets copies of these files
      weights/model.safetensors      embed, final_norm, lm_head
      weights/layer_NNN.safetensors  block by block: made, written (to both), dropped
      refengine.json                 last, with the checksums (WorkspaceWriter.finish)

Memory: one block (plus the globals) at a time — ~0.4 GB for a 7B float16 block, 0.75 GB for an 8B
block's float16 HF copy of int4 weights. Disk: weights × 1 for the workspace, × 1 again for the HF directory.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from refengine.bench.errors import BenchError
from refengine.bench.hf_writer import HFWriter
from refengine.bench.random_weights import RandomWeights
from refengine.bench.shapes import shape_config
from refengine.bench.synthetic_tokenizer import synthetic_tokenizer
from refengine.quant.primitives import group_size_fit
from refengine.workspace.atomic import atomic_directory, check_destination
from refengine.workspace.format import TOKENIZER_DIR
from refengine.workspace.writer import WorkspaceWriter, manifest_fields

WEIGHT_TYPES = ("float16", "int4")


@dataclass(frozen=True)
class RandomModelOptions:
    shape: str
    dst: Path
    weight_type: str = "float16"        # float16 | int4
    group_size: int = 128               # int4 only
    seed: int = 0
    hf_out: Path | None = None          # also write the weights as a Hugging Face directory here
    force: bool = False                 # replace an existing workspace at dst
    threads: int | None = None          # None: one per CPU


@dataclass
class RandomModelSummary:
    dst: Path
    hf_out: Path | None
    seconds: float
    workspace_bytes: int
    hf_bytes: int


def validate(opts: RandomModelOptions):
    """The shape's ModelConfig, after checking every option against it (nothing written yet)."""
    cfg = shape_config(opts.shape)
    if opts.weight_type not in WEIGHT_TYPES:
        raise BenchError(f"--weight-type {opts.weight_type!r} is not supported (choose from {', '.join(WEIGHT_TYPES)})")
    if opts.weight_type == "int4":
        fit = group_size_fit(cfg, opts.group_size)
        if opts.group_size not in fit.fitting:      # also refuses sizes outside GROUP_SIZES that divide
            raise BenchError(f"--group-size {opts.group_size} does not fit the {opts.shape} shape (its widths "
                             f"{sorted({w for _, w in fit.widths})}; group sizes that fit: {list(fit.fitting)})")
    if opts.threads is not None and opts.threads < 1:
        raise BenchError(f"--threads must be at least 1, got {opts.threads}")
    check_destination(Path(opts.dst), opts.force)
    if opts.hf_out is not None:
        check_hf_destination(Path(opts.hf_out), Path(opts.dst))
    return cfg


def check_hf_destination(hf_out: Path, dst: Path) -> None:
    """--hf-out is never replaced (it is no workspace, so --force does not apply): it must be new or empty."""
    if hf_out.resolve() == dst.resolve():
        raise BenchError("--hf-out must be another directory than the workspace")
    if hf_out.exists() and (not hf_out.is_dir() or any(hf_out.iterdir())):
        raise BenchError(f"--hf-out {hf_out} exists and is not an empty directory: remove it first")
    if not hf_out.parent.is_dir():
        raise BenchError(f"--hf-out {hf_out}: the parent directory {hf_out.parent} does not exist")


def make_random_model(opts: RandomModelOptions, progress: Callable[[str], None] = lambda s: None
                      ) -> RandomModelSummary:
    start = time.perf_counter()
    cfg = validate(opts)
    tokenizer = synthetic_tokenizer(cfg.vocab_size, opts.seed)
    group_size = opts.group_size if opts.weight_type == "int4" else None
    with ThreadPoolExecutor(opts.threads or os.cpu_count()) as pool, contextlib.ExitStack() as stack:
        ws_tmp = stack.enter_context(atomic_directory(Path(opts.dst), opts.force))
        hf = HFWriter(stack.enter_context(atomic_directory(Path(opts.hf_out))), cfg) if opts.hf_out else None
        writer = WorkspaceWriter(ws_tmp, "float16")
        writer.write_tokenizer(tokenizer, {}, cfg.max_position_embeddings)
        weights = RandomWeights(cfg, opts.seed, pool)
        embed, lm_head, final_norm = weights.embed(), weights.lm_head(), weights.norm()
        writer.write_globals(embed, final_norm, lm_head)
        if hf:
            hf.write_globals(embed, final_norm, lm_head)
        del embed, lm_head
        for i in range(cfg.num_layers):
            layer = weights.layer(i, group_size)
            writer.write_layer(i, layer)
            if hf:
                hf.write_layer(i, layer)
            progress(f"block {i + 1}/{cfg.num_layers} written ({time.perf_counter() - start:.0f} s)")
        manifest = writer.finish(manifest_fields(cfg, tokenizer, opts.weight_type, "float16", group_size,
                                                 _quant_record(opts) if group_size else None,
                                                 f"random weights: shape {opts.shape}, seed {opts.seed}"))
        if hf:
            hf.finish(tokenizer, ws_tmp / TOKENIZER_DIR)
    return RandomModelSummary(Path(opts.dst), opts.hf_out, time.perf_counter() - start,
                              sum(f["bytes"] for f in manifest["files"].values()), hf.total_bytes if hf else 0)


def _quant_record(opts: RandomModelOptions) -> dict:
    return {"method": "random", "w_bits": 4, "group_size": opts.group_size, "seed": opts.seed,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "note": "random codes with plausible scales and zeros (refengine/bench/random_weights.py); "
                    "not a quantized model"}

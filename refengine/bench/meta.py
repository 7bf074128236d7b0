"""The facts a benchmark result is meaningless without: which model, weights, device, engine settings, when.

`decode_weight_bytes` and `kv_bytes_per_token` are what one decode step must read from memory (weights once
per step, K and V of every context token of every sequence): tools/plot_benchmarks.py turns them and the
copy bandwidth into the bandwidth bound on decode tokens/s. Under tensor parallelism (--tp N) both are one
GPU's share (rank 0's shard: its heads, channels and vocabulary rows), since every GPU reads its own share
at its own bandwidth at the same time; `tp` says how many there are.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

from refengine import __version__
from refengine.engine.kv_cache import KVCache
from refengine.quant.primitives import Int4Weight


def _nbytes(a) -> int:
    if a is None:
        return 0
    if isinstance(a, Int4Weight):
        return int(a.qweight.nbytes + a.scales.nbytes + a.zeros.nbytes)
    return int(a.nbytes)


def rank_model(model):
    """What one GPU holds and reads each step: the model itself, or under --tp rank 0's LlamaModel
    (TensorParallelModel.local, 1/N of the heads, channels and vocabulary)."""
    return getattr(model, "local", model)


def decode_weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: every block, the final norm and the LM head (of the
    embedding only a row per sequence, left out)."""
    w = model.weights
    return sum(_nbytes(a) for layer in w.layers for a in vars(layer).values()) + _nbytes(w.final_norm) \
        + _nbytes(w.lm_head)


def kv_bytes_per_token(model) -> int:
    """K and V of one token in every layer: the KV cache's own block size arithmetic, for a block of 1."""
    return KVCache.bytes_per_block(model.cfg, 1, model.dtype.itemsize)


def decode_floor_tokens_per_s(meta: dict, batch: int, context: float) -> float | None:
    """The bandwidth bound on decode tokens/s: `batch` sequences of `context` tokens each take one step, which
    reads the weights once and every sequence's K and V, at the measured copy rate — batch · copy ÷ (weight bytes
    + batch · context · KV bytes per token). None without a copy rate (the CPU)."""
    copy = meta.get("copy_GBps")
    if not copy:
        return None
    return batch * copy * 1e9 / (meta["decode_weight_bytes"] + batch * context * meta["kv_bytes_per_token"])


def weight_type(model) -> tuple[str, int | None]:
    """('int4', group size) when the linears are packed on the device, else (their dtype, None)."""
    qkv = model.weights.layers[0].qkv
    if isinstance(qkv, Int4Weight):
        return "int4", qkv.group_size
    return str(qkv.dtype), None


def run_meta(engine, model_spec: str, backend: str, device: str, copy_gbps: float | None, seed: int,
             label: str | None) -> dict:
    model = engine.model
    rank = rank_model(model)
    wtype, group = weight_type(rank)
    c = model.cfg
    tp = getattr(model, "tp", 1)
    return {"label": label or f"refengine {backend} {wtype}" + (f" g{group}" if group else "")
            + (f" tp{tp}" if tp > 1 else ""),
            "model": model_spec, "backend": backend, "device": device, "weight_type": wtype, "group_size": group,
            "shape": {"hidden": c.hidden_size, "layers": c.num_layers, "heads": c.num_heads,
                      "kv_heads": c.num_kv_heads, "head_dim": c.head_dim, "intermediate": c.intermediate_size,
                      "vocab": c.vocab_size},
            "tp": tp,
            "decode_weight_bytes": decode_weight_bytes(rank), "kv_bytes_per_token": kv_bytes_per_token(rank),
            "copy_GBps": copy_gbps,
            "engine": {**dataclasses.asdict(engine.config), "session_len": engine.session_len,
                       "kv_blocks": engine.core.block_manager.num_blocks},
            "seed": seed, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "refengine": __version__}

"""Paged-attention test scenarios shared by test_attention_prefill.py and test_attention_decode.py."""

from __future__ import annotations

import numpy as np

UNUSED_BLOCK = np.iinfo(np.int32).max       # block-table padding: an illegal address if a kernel reads it


def paged_scenario(rng, earlier, new, heads, kv_heads, head_dim, block_size, dtype, extra_blocks=3):
    """Random q [T, H, D] and caches; sequence b has earlier[b] cached tokens and new[b] query rows, its
    blocks scattered through the cache. Returns (q, k_cache, v_cache, tables, ctx, cu) as host arrays."""
    ctx = np.asarray(earlier) + np.asarray(new)
    need = [-(-int(c) // block_size) for c in ctx]
    nb = sum(need) + extra_blocks
    order = rng.permutation(nb)
    width = max(need) + 2
    tables = np.full((len(ctx), width), UNUSED_BLOCK, dtype=np.int32)
    start = 0
    for b, n in enumerate(need):
        tables[b, :n] = order[start:start + n]
        start += n
    cu = np.concatenate([[0], np.cumsum(new)]).astype(np.int64)
    shape = (nb, block_size, kv_heads, head_dim)
    k_cache = rng.standard_normal(shape).astype(dtype)
    v_cache = rng.standard_normal(shape).astype(dtype)
    q = (rng.standard_normal((int(cu[-1]), heads, head_dim)) * 1.5).astype(dtype)
    return q, k_cache, v_cache, tables, ctx.astype(np.int64), cu

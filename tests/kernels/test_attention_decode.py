"""kernels_cu/attention_decode.cu: every version vs reference.paged_attention with one query per sequence:
GQA group sizes 1..8, head_dim 64/128/256, contexts from 1 key to a few thousand, split-K on and off."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.kernels.attention_cases import paged_scenario
from tests.kernels.helpers import fresh_rng, require_gpu, run_version
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import cuda, reference as ref  # noqa: E402

CONTEXTS = [1, 37, 300, 1000, 64, 2049, 5, 4500]


@pytest.mark.parametrize("heads,kv_heads,head_dim", [
    (8, 8, 128), (9, 3, 64), (16, 2, 64), (12, 4, 128), (4, 2, 256), (14, 2, 128), (32, 32, 128)])
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("splits", ["auto", "one", "short chunks", "long chunks"])
def test_decode_attention(version, heads, kv_heads, head_dim, splits, monkeypatch):
    """(auto: decode_min_split picks by B·KVH; short / long chunks: its two values forced, whatever the GPU.)"""
    rng, seed = fresh_rng()
    if splits == "one":
        monkeypatch.setattr(cuda, "decode_splits", lambda *a: 1)
    if splits.endswith("chunks"):
        monkeypatch.setattr(cuda, "decode_min_split", lambda *a: 32 if splits == "short chunks" else 256)
    earlier = [c - 1 for c in CONTEXTS]
    q, kc, vc, tables, ctx, cu = paged_scenario(rng, earlier, [1] * len(CONTEXTS), heads, kv_heads, head_dim, 16,
                                                np.float16)
    scale = 1 / math.sqrt(head_dim)
    args = [cp.asarray(a) for a in (q, kc, vc, tables, ctx, cu)]
    got = run_version("attention_decode", version, *args, scale)
    assert got is not None
    want = ref.paged_attention(q, kc, vc, tables, ctx, cu, scale)
    assert_close(got, want, "paged_attention", "float16", f"splits {splits}, seed {seed}")
    again = run_version("attention_decode", version, *args, scale)      # counters were reset: same answer
    assert_close(again, got, "paged_attention", "float16", "second launch")


def test_decode_attention_float32_v1():
    rng, seed = fresh_rng()
    q, kc, vc, tables, ctx, cu = paged_scenario(rng, [0, 99, 7], [1, 1, 1], 6, 2, 40, 8, np.float32)
    got = run_version("attention_decode", "v1", *[cp.asarray(a) for a in (q, kc, vc, tables, ctx, cu)], 0.2)
    assert_close(got, ref.paged_attention(q, kc, vc, tables, ctx, cu, 0.2), "paged_attention", "float32",
                 f"seed {seed}")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_empty_context_gives_zeros(version):
    """Padding rows of a CUDA-graph bucket have no context: their output is 0, not NaN."""
    rng, _ = fresh_rng()
    q, kc, vc, tables, ctx, cu = paged_scenario(rng, [4, 0], [1, 1], 4, 2, 64, 16, np.float16)
    ctx[1] = 0
    got = run_version("attention_decode", version, *[cp.asarray(a) for a in (q, kc, vc, tables, ctx, cu)], 0.125)
    assert not cp.isnan(got).any() and float(cp.abs(got[1]).max()) == 0.0

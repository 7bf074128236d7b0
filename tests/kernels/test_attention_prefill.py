"""kernels_cu/attention_prefill.cu: every version vs reference.paged_attention on packed batches that mix
a fresh prefill, a chunk of a longer prompt and a session's next turn (earlier tokens in the cache), with
GQA, block tables scattered through the cache, and tile boundaries (16 rows, 64 keys) crossed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.kernels.attention_cases import paged_scenario
from tests.kernels.helpers import fresh_rng, require_gpu, run_version
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import cuda, reference as ref  # noqa: E402

BATCHES = {
    "one-prefill": ([0], [37]),
    "mixed": ([0, 70, 5, 130], [17, 40, 1, 64]),
    "next-turn": ([200, 0], [3, 80]),
}


@pytest.mark.parametrize("batch", sorted(BATCHES))
@pytest.mark.parametrize("heads,kv_heads,head_dim,dtype", [
    (8, 2, 64, np.float16), (9, 3, 64, np.float16), (4, 4, 128, np.float16), (6, 2, 16, np.float16),
    (4, 2, 72, np.float32), (2, 1, 256, np.float16)])
@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_prefill_attention(version, batch, heads, kv_heads, head_dim, dtype):
    rng, seed = fresh_rng()
    earlier, new = BATCHES[batch]
    q, kc, vc, tables, ctx, cu = paged_scenario(rng, earlier, new, heads, kv_heads, head_dim, 16, dtype)
    scale = 1 / math.sqrt(head_dim)
    got = run_version("attention_prefill", version, cp.asarray(q), cp.asarray(kc), cp.asarray(vc),
                      cp.asarray(tables), cp.asarray(ctx), cp.asarray(cu), scale)
    if got is None:
        assert version in ("v2", "v3") and (dtype != np.float16 or head_dim not in (64, 128) or cuda._cc() < 80)
        return
    want = ref.paged_attention(q, kc, vc, tables, ctx, cu, scale)
    assert_close(got, want, "paged_attention", np.dtype(dtype).name, f"{batch}, seed {seed}")


def test_public_op_routes_prefill_and_decode_strided_q():
    rng, seed = fresh_rng()
    for earlier, new in (([0, 9], [5, 7]), ([30, 2, 7], [1, 1, 1])):
        q, kc, vc, tables, ctx, cu = paged_scenario(rng, earlier, new, 8, 2, 64, 16, np.float16)
        qk = cp.asarray(np.concatenate([q, q[:, :2]], axis=1))        # q as the model passes it: a view
        got = cuda.paged_attention(qk[:, :8], cp.asarray(kc), cp.asarray(vc), tables, ctx, cu, 0.125)
        assert_close(got, ref.paged_attention(q, kc, vc, tables, ctx, cu, 0.125), "paged_attention", "float16",
                     f"seed {seed}")


# v3 (tensor cores): 64-row query tiles and 64-key tiles. Packed batches of odd lengths — a fresh prefill
# crossing several row tiles, chunks whose first position is not a multiple of 64 (the diagonal cuts a key
# tile), one-row and empty sequences — at GQA ratios 1, 4 and 8 and both head dims, with the engine's
# block size (64: a key tile is one cache block) and smaller / odd ones (a key tile spans several blocks).
V3_BATCHES = {
    "prefill+chunks": ([0, 77, 130, 5], [150, 61, 1, 66]),
    "next-turns": ([300, 64, 5], [9, 129, 0]),
}


@pytest.mark.parametrize("batch", sorted(V3_BATCHES))
@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (16, 2)])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("block_size", [64, 16, 7])
def test_prefill_v3_tensor_cores(batch, heads, kv_heads, head_dim, block_size):
    if cuda._cc() < 80:
        pytest.skip("v3 needs compute capability 8.0 (mma.sync, cp.async)")
    rng, seed = fresh_rng()
    earlier, new = V3_BATCHES[batch]
    q, kc, vc, tables, ctx, cu = paged_scenario(rng, earlier, new, heads, kv_heads, head_dim, block_size, np.float16)
    scale = 1 / math.sqrt(head_dim)
    got = run_version("attention_prefill", "v3", cp.asarray(q), cp.asarray(kc), cp.asarray(vc), cp.asarray(tables),
                      cp.asarray(ctx), cp.asarray(cu), scale)
    assert got is not None, "v3 refused a float16 head_dim 64/128 input on sm_80+"
    want = ref.paged_attention(q, kc, vc, tables, ctx, cu, scale)
    assert_close(got, want, "paged_attention", "float16", f"{batch}, G={heads // kv_heads}, D={head_dim}, "
                                                          f"block {block_size}, seed {seed}")


def test_prefill_v3_is_the_default_and_refuses_what_it_cannot_take():
    assert cuda.DEFAULTS["attention_prefill"][0] == "v3"
    if cuda._cc() < 80:
        pytest.skip("v3 needs compute capability 8.0 (mma.sync, cp.async)")
    rng, _ = fresh_rng()
    q, kc, vc, tables, ctx, cu = paged_scenario(rng, [3], [20], 4, 2, 64, 16, np.float16)
    qk = cp.asarray(np.concatenate([q, q[:, :1]], axis=1))           # rows 5 heads · 64 · 2 = 640 bytes apart
    args = (cp.asarray(kc), cp.asarray(vc), cp.asarray(tables), cp.asarray(ctx), cp.asarray(cu), 0.125)
    got = run_version("attention_prefill", "v3", qk[:, :4], *args)
    assert_close(got, ref.paged_attention(q, kc, vc, tables, ctx, cu, 0.125), "paged_attention", "float16",
                 "strided q")
    flat = cp.zeros(q.size + 8, np.float16)
    flat[4:4 + q.size] = cp.asarray(q).reshape(-1)
    unaligned = flat[4:4 + q.size].reshape(q.shape)                   # 8 bytes off a 16-byte boundary
    assert run_version("attention_prefill", "v3", unaligned, *args) is None
    got = cuda.paged_attention(unaligned, *args)                        # the registry falls back to v2
    assert_close(got, ref.paged_attention(unaligned.get(), kc, vc, tables, ctx, cu, 0.125), "paged_attention",
                 "float16", "unaligned q")

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
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_prefill_attention(version, batch, heads, kv_heads, head_dim, dtype):
    rng, seed = fresh_rng()
    earlier, new = BATCHES[batch]
    q, kc, vc, tables, ctx, cu = paged_scenario(rng, earlier, new, heads, kv_heads, head_dim, 16, dtype)
    scale = 1 / math.sqrt(head_dim)
    got = run_version("attention_prefill", version, cp.asarray(q), cp.asarray(kc), cp.asarray(vc),
                      cp.asarray(tables), cp.asarray(ctx), cp.asarray(cu), scale)
    if got is None:
        assert version == "v2" and (dtype != np.float16 or head_dim not in (64, 128))
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

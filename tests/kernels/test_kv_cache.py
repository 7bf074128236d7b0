"""kernels_cu/kv_cache.cu: write_kv_cache (through a slot mapping, padding slots skipped) and copy_blocks,
every version vs the reference; the whole cache is compared, so a stray write anywhere fails."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.helpers import fresh_rng, randn, require_gpu, supports
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import cuda, reference as ref  # noqa: E402


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("kv_heads,head_dim", [(3, 64), (2, 10), (8, 128)])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_write_kv_cache(version, kv_heads, head_dim, dtype):
    rng, seed = fresh_rng()
    NB, BS, T, H = 9, 16, 21, 5
    k_cache, v_cache = randn(rng, (NB, BS, kv_heads, head_dim), dtype), randn(rng, (NB, BS, kv_heads, head_dim), dtype)
    qkv = randn(rng, (T, (H + 2 * kv_heads) * head_dim), dtype)
    k = qkv[:, H * head_dim:(H + kv_heads) * head_dim].reshape(T, kv_heads, head_dim)
    v = qkv[:, (H + kv_heads) * head_dim:].reshape(T, kv_heads, head_dim)
    slots = rng.permutation(NB * BS)[:T]
    slots[[3, 10]] = -1                                            # padding rows
    kd, vd = cp.asarray(k_cache), cp.asarray(v_cache)
    qkv_d = cp.asarray(qkv)
    kv_view = lambda a, b: qkv_d[:, a * head_dim:b * head_dim].reshape(T, kv_heads, head_dim)
    if not supports("write_kv_cache", version, kv_view(H, H + kv_heads), kv_view(H + kv_heads, H + 2 * kv_heads),
                    kd, vd, cp.asarray(slots)):
        assert version == "v2" and (kv_heads * head_dim * k.itemsize % 16 or qkv.strides[0] % 16)
        return
    ref.write_kv_cache(k, v, k_cache, v_cache, slots)
    name = np.dtype(dtype).name
    assert_close(kd, k_cache, "write_kv_cache", name, f"k, seed {seed}")
    assert_close(vd, v_cache, "write_kv_cache", name, f"v, seed {seed}")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("version", ["v1", "cupy"])
@pytest.mark.parametrize("pairs", [[(0, 5), (3, 7), (2, 1)], [(1, 4), (4, 6)]])   # the second one chains
def test_copy_blocks(version, pairs, dtype):
    rng, seed = fresh_rng()
    L, shape = 3, (8, 16, 3, 64)
    ks = [randn(rng, shape, dtype) for _ in range(L)]
    vs = [randn(rng, shape, dtype) for _ in range(L)]
    kd, vd = [cp.asarray(a) for a in ks], [cp.asarray(a) for a in vs]
    src, dst = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    assert supports("copy_blocks", version, kd + vd, src, dst)
    ref.copy_blocks(ks, vs, src, dst)
    for got, want in zip(kd + vd, ks + vs):
        assert_close(got, want, "copy_blocks", np.dtype(dtype).name, f"seed {seed}")

"""kernels_cu/rope.cu: rotary_embedding vs the reference for every rope scaling type (the host computes
inv_freq; the kernel must only apply it), on q/k views into a fused qkv buffer, positions up to 8k."""

from __future__ import annotations

import numpy as np
import pytest

from refengine.config import RopeScaling
from tests.kernels.helpers import fresh_rng, randn, require_gpu, run_version
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import cuda, reference as ref  # noqa: E402

SCALINGS = {
    "default": (RopeScaling(), 0),
    "linear": (RopeScaling("linear", 2.5), 0),
    "dynamic": (RopeScaling("dynamic", 2.0), 9000),
    "llama3": (RopeScaling("llama3", 8.0, 1.0, 4.0, 1024), 0),
}


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("scaling", sorted(SCALINGS))
@pytest.mark.parametrize("heads,head_dim", [(9, 64), (5, 128), (3, 18)])
def test_rotary_embedding(scaling, heads, head_dim, dtype):
    rng, seed = fresh_rng()
    T, kv_heads = 11, 2
    rs, seq_len = SCALINGS[scaling]
    inv = ref.rope_inv_freq(head_dim, 10000.0, rs, 4096, seq_len)
    qkv = randn(rng, (T, (heads + 2 * kv_heads) * head_dim), dtype, 2.0)
    positions = rng.integers(0, 8192, T)
    qkv_d = cp.asarray(qkv)
    q = qkv_d[:, :heads * head_dim].reshape(T, heads, head_dim)             # strided token rows
    k = qkv_d[:, heads * head_dim:(heads + kv_heads) * head_dim].reshape(T, kv_heads, head_dim)
    for name, view, host in (("q", q, qkv[:, :heads * head_dim].reshape(T, heads, head_dim)),
                             ("k", k, qkv[:, heads * head_dim:(heads + kv_heads) * head_dim].reshape(T, kv_heads,
                                                                                                  head_dim))):
        got = run_version("rotary_embedding", "v1", view, cp.asarray(positions), cp.asarray(inv))
        assert_close(got, ref.rotary_embedding(host, positions, inv), "rotary_embedding", np.dtype(dtype).name,
                     f"{name}, seed {seed}")


def test_rope_inv_freq_is_cached_on_device():
    a = cuda.rope_inv_freq(64, 10000.0, RopeScaling(), 4096)
    assert isinstance(a, cp.ndarray) and a is cuda.rope_inv_freq(64, 10000.0, RopeScaling(), 4096)
    np.testing.assert_array_equal(a.get(), ref.rope_inv_freq(64, 10000.0, RopeScaling(), 4096))


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("version", ["v1", "unfused"])
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(9, 3, 64), (4, 4, 18), (32, 8, 128)])
def test_rotary_embedding_write_kv(version, heads, kv_heads, head_dim, dtype):
    """The fused rope + cache store: same rotated q|k and the same whole caches as the two reference ops."""
    from tests.kernels.helpers import run_version
    rng, seed = fresh_rng()
    T, NB, BS = 13, 6, 16
    qkv = randn(rng, (T, (heads + 2 * kv_heads) * head_dim), dtype, 2.0)
    qk = qkv[:, :(heads + kv_heads) * head_dim].reshape(T, heads + kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim:].reshape(T, kv_heads, head_dim)
    positions = rng.integers(0, 4000, T)
    slots = rng.permutation(NB * BS)[:T]
    slots[4] = -1
    inv = ref.rope_inv_freq(head_dim, 10000.0, RopeScaling(), 4096)
    kc, vc = randn(rng, (NB, BS, kv_heads, head_dim), dtype), randn(rng, (NB, BS, kv_heads, head_dim), dtype)
    kd, vd, qkv_d = cp.asarray(kc), cp.asarray(vc), cp.asarray(qkv)
    got = run_version("rotary_embedding_write_kv", version,
                      qkv_d[:, :(heads + kv_heads) * head_dim].reshape(T, heads + kv_heads, head_dim),
                      qkv_d[:, (heads + kv_heads) * head_dim:].reshape(T, kv_heads, head_dim), cp.asarray(positions),
                      cp.asarray(inv), kd, vd, cp.asarray(slots))
    want = ref.rotary_embedding_write_kv(qk, v, positions, inv, kc, vc, slots)
    name = np.dtype(dtype).name
    assert_close(got, want, "rotary_embedding", name, f"seed {seed}")
    assert_close(kd, kc, "rotary_embedding", name, f"k cache, seed {seed}")    # the stored k is the rotated k
    assert_close(vd, vc, "write_kv_cache", name, f"v cache, seed {seed}")

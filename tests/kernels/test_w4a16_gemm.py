"""kernels_cu/w4a16_gemm.cu and w4a16_gemv.cu (v7): linear_w4a16 every version vs reference.linear_w4a16,
group sizes 32/64/128, GEMV (1..8 rows) and GEMM (many rows) paths, output counts that are not multiples of the
16-row tile; the streaming kernels (v5, v6) also with forced block counts in both partition modes, so that tiles
shared by several blocks (the counter + slot reduction) and ranges that start and end mid-tile are exercised;
v7 with every row count, strided x, a small forced grid (many row groups per warp) and every compiled (R, D)."""

from __future__ import annotations

import numpy as np
import pytest

from refengine.quant.primitives import quantize_int4
from tests.kernels.helpers import fresh_rng, randn, require_gpu, run_version
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import cuda, reference as ref  # noqa: E402


def make(rng, M, K, N, g, bias):
    x = randn(rng, (M, K), np.float16)
    w = quantize_int4(randn(rng, (N, K), np.float32, 1 / np.sqrt(K)), g)
    b = randn(rng, (N,), np.float16, 0.5) if bias else None
    dev = [cp.asarray(a) for a in (x, w.qweight, w.scales, w.zeros)]
    return x, w, b, dev, None if b is None else cp.asarray(b)


@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(1, 4096, 1000), (3, 576, 960), (8, 1536, 577), (13, 512, 96), (70, 256, 130),
                                   (1, 96, 17)])
@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v4", "v5", "v6", "v7", "v8"])
@pytest.mark.parametrize("bias", [False, True])
def test_w4a16(version, M, K, N, g, bias):
    if K % g:
        pytest.skip(f"group {g} does not divide K={K}")
    rng, seed = fresh_rng()
    x, w, b, (xd, qd, sd, zd), bd = make(rng, M, K, N, g, bias)
    got = run_version("linear_w4a16", version, xd, qd, sd, zd, g, bd)
    if got is None:
        assert (version == "v4" and M < cuda.W4A16_CUBLAS_M) or (
            version in ("v2", "v3", "v5", "v6", "v7", "v8") and K % 32) or (
            version in ("v3", "v5", "v7") and M > cuda.SMALL_M) or (version == "v8" and M > cuda.W4A16_V8_MAX_MB)
        return
    want = ref.linear_w4a16(x, w.qweight, w.scales, w.zeros, g, b)
    assert_close(got, want, "linear_w4a16", "float16", f"{version} g{g} seed {seed}")


@pytest.mark.parametrize("cfg", ["v5", "v5s3", "v6_m16", "v6_m32", "v6_m64"])
@pytest.mark.parametrize("M,K,N,g", [(1, 1536, 1000, 64), (3, 576, 161, 32), (7, 4096, 40, 128), (13, 384, 300, 128),
                                     (33, 640, 129, 32), (70, 256, 257, 64)])
@pytest.mark.parametrize("blocks,tile_mode", [(1, False), (3, False), (7, False), (5, True), (None, None)])
def test_w4a16_stream_partitions(cfg, M, K, N, g, blocks, tile_mode):
    c = cuda.W4A16_STREAM[cfg]
    if c.xfull and M > 8:
        pytest.skip("the GEMV configurations take at most 8 rows")
    rng, seed = fresh_rng()
    x, w, b, (xd, qd, sd, zd), bd = make(rng, M, K, N, g, True)
    want = ref.linear_w4a16(x, w.qweight, w.scales, w.zeros, g, b)
    got = cuda._w4a16_stream(c, xd, K, qd, sd, zd, g, bd, M, K, blocks=blocks, tile_mode=tile_mode)
    what = f"{cfg} blocks={blocks} tile_mode={tile_mode} g{g} seed {seed}"
    assert_close(got, want, "linear_w4a16", "float16", what)
    again = cuda._w4a16_stream(c, xd, K, qd, sd, zd, g, bd, M, K, blocks=blocks, tile_mode=tile_mode)
    np.testing.assert_array_equal(got.get(), again.get(), err_msg=f"not deterministic: {what}")


def test_w4a16_stream_strided_rows():
    """x rows further apart than K (a view of a wider buffer), through the v5 and v6 defaults."""
    rng, seed = fresh_rng()
    x, w, _, (_, qd, sd, zd), _ = make(rng, 20, 512, 200, 64, False)
    wide = cp.zeros((20, 512 + 64), cp.float16)
    wide[:, :512] = cp.asarray(x)
    for M, version in ((5, "v5"), (20, "v6")):
        got = run_version("linear_w4a16", version, wide[:M, :512], qd, sd, zd, 64, None)
        want = ref.linear_w4a16(x[:M], w.qweight, w.scales, w.zeros, 64)
        assert_close(got, want, "linear_w4a16", "float16", f"{version} seed {seed}")


def run_v7(x, qd, sd, zd, g, bd, config=None, version="v7"):
    return cuda.VERSIONS["linear_w4a16"][version](x, qd, sd, zd, g, bd, config=config)


@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("M", range(1, 9))
@pytest.mark.parametrize("slots", [None, 8])
@pytest.mark.parametrize("version", ["v7", "v8"])
def test_w4a16_v7(version, M, g, slots, monkeypatch):
    """v7 on every row count it takes, x rows further apart than K (a view of a wider buffer), a bias, an odd N
    (a last row group that is cut short) and K = 1536 (the last step of a row has half its lanes idle).
    slots=8: as if only 8 warps fitted on the GPU, so that each warp streams many row groups through its ring.
    v8 (the same walk, float16-pair math) on the rows it takes."""
    if version == "v8" and M > cuda.W4A16_V8_MAX_MB:
        pytest.skip("v8 takes at most 4 rows")
    if slots:
        monkeypatch.setattr(cuda, "_v7_warp_slots", lambda kernel, device: slots)
    rng, seed = fresh_rng()
    K, N = 1536, 333
    x, w, b, (_, qd, sd, zd), bd = make(rng, M, K, N, g, True)
    wide = cp.zeros((M, K + 72), cp.float16)
    wide[:, 8:K + 8] = cp.asarray(x)
    got = run_v7(wide[:, 8:K + 8], qd, sd, zd, g, bd, version=version)
    want = ref.linear_w4a16(x, w.qweight, w.scales, w.zeros, g, b)
    assert_close(got, want, "linear_w4a16", "float16", f"{version} M={M} g{g} slots={slots} seed {seed}")


@pytest.mark.parametrize("M,K,N,g", [(1, 4096, 1001, 128), (1, 352, 64, 32), (3, 1024, 517, 64), (4, 2080, 130, 32)])
def test_w4a16_v7_configs_agree(M, K, N, g):
    """Every product is exact and each output is one warp's sum in a fixed order, so all (R, D) configurations
    and grid sizes give the same bits — and the same as the default."""
    rng, seed = fresh_rng()
    x, w, b, (xd, qd, sd, zd), bd = make(rng, M, K, N, g, True)
    want = ref.linear_w4a16(x, w.qweight, w.scales, w.zeros, g, b)
    default = run_v7(xd, qd, sd, zd, g, bd)
    assert_close(default, want, "linear_w4a16", "float16", f"v7 default seed {seed}")
    for mb, R, D in cuda.W4A16_V7_TUNE:
        if mb == cuda.w4a16_v7_mb(M):
            got = run_v7(xd, qd, sd, zd, g, bd, config=(R, D))
            np.testing.assert_array_equal(got.get(), default.get(), err_msg=f"R={R} D={D} seed {seed}")


@pytest.mark.parametrize("M,K,N,g", [(1, 4096, 1001, 128), (1, 352, 64, 32), (2, 1024, 517, 64)])
def test_w4a16_v8_configs(M, K, N, g):
    """v8: every (R, D) with the same PW gives the same bits (each lane's float16 partials see the same products
    in the same order); a larger PW only moves the float16 roundings, within the tolerance."""
    rng, seed = fresh_rng()
    x, w, b, (xd, qd, sd, zd), bd = make(rng, M, K, N, g, True)
    want = ref.linear_w4a16(x, w.qweight, w.scales, w.zeros, g, b)
    default = run_v7(xd, qd, sd, zd, g, bd, version="v8")
    for mb, R, D, PW in cuda.W4A16_V8_TUNE:
        if mb != cuda.w4a16_v7_mb(M):
            continue
        got = run_v7(xd, qd, sd, zd, g, bd, config=(R, D, PW), version="v8")
        assert_close(got, want, "linear_w4a16", "float16", f"v8 R={R} D={D} PW={PW} seed {seed}")
        if PW == cuda.W4A16_V8[mb][2]:
            np.testing.assert_array_equal(got.get(), default.get(), err_msg=f"R={R} D={D} seed {seed}")


def test_w4a16_v8_large_activations():
    """x with ±1000 outliers (as after the MLP's activation) against the float32 reference, within the bound
    of v8's arithmetic: each float16 partial adds 4 products with 4 roundings of 2^-11, so
    |got − want| <= 2^-9 · Σ|x·w| + 2^-10 · |want| (the output's own rounding). The fixed tolerance table
    does not apply here: with outliers Σ|x·w| is far larger than |want| where the products cancel."""
    from refengine.quant.primitives import dequantize_int4
    rng, seed = fresh_rng()
    K, N, g = 512, 64, 128
    x = randn(rng, (1, K), np.float16)
    x[0, rng.choice(K, 8, replace=False)] = np.float16(1000) * rng.choice([-1, 1], 8).astype(np.float16)
    w = quantize_int4(randn(rng, (N, K), np.float32, 1 / np.sqrt(K)), g)
    got = run_v7(cp.asarray(x), *(cp.asarray(a) for a in (w.qweight, w.scales, w.zeros)), g, None, version="v8")
    got = got.get().astype(np.float32)
    want = ref.linear_w4a16(x, w.qweight, w.scales, w.zeros, g).astype(np.float32)
    mass = np.abs(x.astype(np.float32)) @ np.abs(dequantize_int4(w).astype(np.float32)).T
    bound = mass / 512 + np.abs(want) / 1024
    assert np.isfinite(got).all(), f"seed {seed}"
    worst = float((np.abs(got - want) / bound).max())
    assert worst <= 1, f"error {worst:.2f}× the bound, seed {seed}"


@pytest.mark.parametrize("g", [32, 128])
def test_dequantize_matches_primitives(g):
    from refengine.quant.primitives import dequantize_int4
    rng, seed = fresh_rng()
    w = quantize_int4(randn(rng, (33, 256), np.float32), g)
    got = cuda.dequantize_w4a16(cp.asarray(w.qweight), cp.asarray(w.scales), cp.asarray(w.zeros), g)
    assert_close(got, dequantize_int4(w), "rms_norm", "float16", f"(one float16 rounding) seed {seed}")


@pytest.mark.parametrize("g", [32, 64, 128])
@pytest.mark.parametrize("M,K,N", [(1, 1536, 576), (4, 512, 130), (8, 256, 1000), (12, 128, 64)])
@pytest.mark.parametrize("version", ["v3", "v5", "v7", "unfused"])
def test_silu_and_mul_linear_w4a16(version, M, K, N, g):
    if K % g:
        pytest.skip(f"group {g} does not divide K={K}")
    rng, seed = fresh_rng()
    gu = randn(rng, (M, 2 * K), np.float16, 2.0)
    w = quantize_int4(randn(rng, (N, K), np.float32, 1 / np.sqrt(K)), g)
    args = [cp.asarray(a) for a in (gu, w.qweight, w.scales, w.zeros)]
    got = run_version("silu_and_mul_linear_w4a16", version, *args, g, None)
    if got is None:
        assert version in ("v3", "v5", "v7") and M > cuda.SMALL_M
        return
    want = ref.silu_and_mul_linear_w4a16(gu, w.qweight, w.scales, w.zeros, g)
    assert_close(got, want, "linear_w4a16", "float16", f"{version} g{g} seed {seed}")
    if version != "unfused":      # the same linear kernel on the separately computed activation: the same bits
        act = cuda.silu_and_mul(args[0])
        np.testing.assert_array_equal(got.get(), run_version("linear_w4a16", version, act, *args[1:], g, None).get())

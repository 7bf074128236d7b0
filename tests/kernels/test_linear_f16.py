"""kernels_cu/linear_f16.cu (+ the cuBLAS path): linear and the float32-output logits, every version vs
reference.linear; decode-sized and prefill-sized row counts, odd output counts, strided x, with bias."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.helpers import fresh_rng, randn, require_gpu, run_version
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import cuda, reference as ref  # noqa: E402

SHAPES = [(1, 576, 960), (3, 64, 17), (8, 1536, 576), (13, 576, 1000), (70, 256, 130), (2, 72, 33), (5, 67, 9)]


def make(rng, M, K, N, dtype, bias, stride=8):
    x = randn(rng, (M, K), dtype)
    w = randn(rng, (N, K), dtype, 1 / np.sqrt(K))
    b = randn(rng, (N,), dtype, 0.5) if bias else None
    wide = cp.asarray(np.concatenate([x, np.ones((M, stride), dtype)], axis=1))
    return x, w, b, wide[:, :K], cp.asarray(w), None if b is None else cp.asarray(b)


def expect_refusal(version, M, K, dtype):
    if version == "v2":
        return dtype != np.float16 or K % 8 or M > cuda.SMALL_M
    if version == "v3":
        return dtype != np.float16 or K % 32
    if version == "cublas":
        return M <= cuda.SMALL_M
    return False


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("version", ["v1", "v2", "v3", "cublas"])
@pytest.mark.parametrize("bias", [False, True])
def test_linear(version, M, K, N, dtype, bias):
    rng, seed = fresh_rng()
    x, w, b, xd, wd, bd = make(rng, M, K, N, dtype, bias)
    got = run_version("linear", version, xd, wd, bd)
    if got is None:
        assert expect_refusal(version, M, K, dtype), f"{version} refused {M}x{K}x{N}"
        return
    assert got.dtype == dtype
    assert_close(got, ref.linear(x, w, b), "linear", np.dtype(dtype).name, f"{version} seed {seed}")


@pytest.mark.parametrize("M,K,N", [(1, 576, 49152 // 16), (4, 64, 131), (20, 128, 77), (3, 72, 10)])
@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_logits_float32_output(version, M, K, N):
    rng, seed = fresh_rng()
    x, w, _, xd, wd, _ = make(rng, M, K, N, np.float16, False)
    got = run_version("logits", version, xd, wd)
    if got is None:
        assert expect_refusal(version, M, K, np.float16)
        return
    assert got.dtype == np.float32
    assert_close(got, ref.logits(x, w), "linear_out32", "float32", f"{version} seed {seed}")


def test_capture_avoids_cublas():
    """Inside a stream capture the public op must not pick cuBLAS (CuPy refuses it there)."""
    rng, seed = fresh_rng()
    x, w, _, xd, wd, _ = make(rng, 32, 128, 64, np.float16, False)
    stream = cp.cuda.Stream(non_blocking=False)
    with stream:
        cuda.linear(xd, wd)                       # compile outside the capture
        stream.begin_capture()
        y = cuda.linear(xd, wd)
        graph = stream.end_capture()
        graph.launch(stream)
    stream.synchronize()
    assert_close(y, ref.linear(x, w), "linear", "float16", f"seed {seed}")


@pytest.mark.parametrize("M,K,N", [(1, 1536, 576), (3, 96, 40), (8, 512, 1000), (13, 256, 70), (2, 72, 9)])
@pytest.mark.parametrize("version", ["v3", "unfused"])
@pytest.mark.parametrize("bias", [False, True])
def test_silu_and_mul_linear(version, M, K, N, bias):
    """The down projection with silu_and_mul fused into its GEMV: vs the twin, and bit for bit vs the unfused
    pair with the same GEMV (v3: the activation is rounded to float16 at the same point, the sums run in the
    same order)."""
    rng, seed = fresh_rng()
    gu = randn(rng, (M, 2 * K), np.float16, 2.0)
    w = randn(rng, (N, K), np.float16, 1 / np.sqrt(K))
    b = randn(rng, (N,), np.float16, 0.5) if bias else None
    args = (cp.asarray(gu), cp.asarray(w), None if b is None else cp.asarray(b))
    got = run_version("silu_and_mul_linear", version, *args)
    if got is None:
        assert version == "v3" and (M > cuda.SMALL_M or K % 32)
        return
    assert_close(got, ref.silu_and_mul_linear(gu, w, b), "linear", "float16", f"{version} seed {seed}")
    if version == "v3":
        unfused = run_version("linear", "v3", cuda.silu_and_mul(args[0]), args[1], args[2])
        np.testing.assert_array_equal(got.get(), unfused.get())


@pytest.mark.parametrize("M,N,K,first", [(1, 64, 256, "v3"), (2, 256, 64, "v2"), (8, 96, 192, "v3"), (9, 64, 256, None)])
def test_linear_order_by_shape(M, N, K, first):
    """A few rows: v3 (tensor cores, K split over warps) when K >= 2N, else v2; more rows: cuBLAS eagerly.
    The op gives the bits of the version its order names first."""
    rng, seed = fresh_rng()
    x = cp.asarray(randn(rng, (M, K), np.float16))
    w = cp.asarray(randn(rng, (N, K), np.float16, 1 / np.sqrt(K)))
    order = cuda.linear_order(M, N, K)
    if first is None:
        assert order[0] == "cublas"
        return
    assert [v for v in order if v != "cublas"][0] == first
    np.testing.assert_array_equal(cuda.linear(x, w).get(), cuda.VERSIONS["linear"][first](x, w).get(),
                                  err_msg=f"seed {seed}")

"""kernels_cu/w4a16_gemv_bulk.cu (linear_w4a16 v9, M = 1, sm_90+): every compiled (RB, W, x staged) against
reference.linear_w4a16 on output counts that are multiples of 8 but not 16, K = 32·odd, K/g odd (RB = 4 must
refuse), a K whose blocks need more than 48 KB of shared memory (the opt-in), group sizes 32/64/128, with and
without bias; v9 against v8 bit for bit (each lane computes the same pieces with the same instructions in the
same order); ±1000 outliers within v8's error bound; the refusals that send the ladder on to v8; and a CUDA
graph with programmatic dependent launch (the bulk copies start before pdl_wait()) giving the eager bits."""

from __future__ import annotations

import numpy as np
import pytest

from refengine.quant.primitives import Int4Weight, dequantize_int4, quantize_int4
from tests.kernels.helpers import fresh_rng, programmatic_replays_match, randn, require_gpu, run_version
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import cuda, pdl, reference as ref  # noqa: E402
from tests.kernels.test_w4a16_gemm import make, run_v7  # noqa: E402

if cuda._cc() < 90:
    pytest.skip("linear_w4a16 v9 needs sm_90 (TMA bulk copies)", allow_module_level=True)


def run_v9(x, qd, sd, zd, g, bd=None, config=None):
    """v9's result, or None if it refuses (Unsupported)."""
    return run_version("linear_w4a16", "v9", x, qd, sd, zd, g, bd) if config is None else \
        _or_none(lambda: cuda.VERSIONS["linear_w4a16"]["v9"](x, qd, sd, zd, g, bd, config=config))


def _or_none(call):
    try:
        return call()
    except cuda.Unsupported:
        return None


def v9_takes(N: int, K: int, g: int, rb: int) -> bool:
    """What the wrapper checks besides M, sm_90 and pointer alignment: N % RB and 16-byte scales / zeros spans."""
    return N % rb == 0 and rb * (K // g) * 2 % 16 == 0


@pytest.mark.parametrize("K,N,gs,bias", [(352, 1000, (32,), False), (352, 1000, (32,), True),
                                         (4096, 1008, (32, 64, 128), True), (4096, 1008, (128,), False),
                                         (2752, 264, (32, 64), True), (32, 8, (32,), False), (32, 8, (32,), True),
                                         (11008, 128, (128,), False), (4096, 11008, (128,), True)])
def test_v9_every_config(K, N, gs, bias):
    """The default and every compiled (RB, W, x staged) equal reference within the tolerance and v8 bit for bit.
    11008 × 128: every block needs more than 48 KB of shared memory (the opt-in); 4096 × 11008: 688 blocks."""
    for g in gs:
        rng, seed = fresh_rng()
        x, w, b, (xd, qd, sd, zd), bd = make(rng, 1, K, N, g, bias)
        want = ref.linear_w4a16(x, w.qweight, w.scales, w.zeros, g, b)
        v8 = run_v7(xd, qd, sd, zd, g, bd, version="v8").get()
        default = run_v9(xd, qd, sd, zd, g, bd)
        assert (default is None) == (cuda.w4a16_v9_config(N, K, g) is None), f"K={K} N={N} g{g}"
        for config in [None, *cuda.W4A16_V9_TUNE]:
            got = default if config is None else run_v9(xd, qd, sd, zd, g, bd, config)
            what = f"v9 config={config} K={K} N={N} g{g} seed {seed}"
            if got is None:
                assert config is not None and not v9_takes(N, K, g, config[0]), what
                continue
            assert config is None or v9_takes(N, K, g, config[0]), f"{what}: expected a refusal"
            assert_close(got, want, "linear_w4a16", "float16", what)
            np.testing.assert_array_equal(got.get(), v8, err_msg=f"{what}: not v8's bits")


def test_v9_large_activations():
    """x with ±1000 outliers against the float32 reference, within the bound of v8's arithmetic (v9 is the same
    per lane): |got − want| <= 2^-9 · Σ|x·w| + 2^-10 · |want| (tests/kernels/test_w4a16_gemm.py explains it)."""
    rng, seed = fresh_rng()
    K, N, g = 2048, 96, 128
    x = randn(rng, (1, K), np.float16)
    x[0, rng.choice(K, 16, replace=False)] = np.float16(1000) * rng.choice([-1, 1], 16).astype(np.float16)
    w = quantize_int4(randn(rng, (N, K), np.float32, 1 / np.sqrt(K)), g)
    want = ref.linear_w4a16(x, w.qweight, w.scales, w.zeros, g).astype(np.float32)
    mass = np.abs(x.astype(np.float32)) @ np.abs(dequantize_int4(w).astype(np.float32)).T
    bound = mass / 512 + np.abs(want) / 1024
    dev = [cp.asarray(a) for a in (x, w.qweight, w.scales, w.zeros)]
    for config in (None, (16, 4, False), (8, 4, True)):
        got = run_v9(*dev, g, None, config).get().astype(np.float32)
        assert np.isfinite(got).all(), f"config={config} seed {seed}"
        worst = float((np.abs(got - want) / bound).max())
        assert worst <= 1, f"config={config}: error {worst:.2f}× the bound, seed {seed}"


def test_v9_refusals_let_the_ladder_go_on():
    """Shapes and layouts v9 cannot take raise Unsupported, so that the ladder tries the next version."""
    rng, seed = fresh_rng()
    K, g = 512, 64
    x, w, _, (xd, qd, sd, zd), _ = make(rng, 2, K, 1000, g, False)
    assert run_v9(xd, qd, sd, zd, g) is None                                  # M = 2
    assert run_v9(xd[:1], qd[:12], sd[:12], zd[:12], g) is None               # N % 8 != 0
    assert run_v9(xd[:1], qd, sd, zd, g, None, (16, 4, True)) is None          # 1000 % 16 != 0
    shifted = cp.empty(sd.size + 1, cp.float16)                               # scales 2 bytes off 16-byte alignment
    shifted[1:] = sd.ravel()
    assert run_v9(xd[:1], qd, shifted[1:].reshape(sd.shape), zd, g) is None
    want = run_v7(xd[:1], qd[:12], sd[:12], zd[:12], g, None, version="v8").get()
    got = cuda._dispatch("linear_w4a16", xd[:1], qd[:12], sd[:12], zd[:12], g, None, order=("v9", "v8"))
    np.testing.assert_array_equal(got.get(), want, err_msg=f"the ladder after v9's refusal, seed {seed}")


def chain(x, res, norm_w, q1, q2, config, links):
    """A decode step in miniature: each kernel reads what the one before wrote (v9 -> v9 included)."""
    v9 = cuda.VERSIONS["linear_w4a16"]["v9"]
    for _ in range(links):
        h, res = cuda.add_rms_norm(x, res, norm_w, 1e-5)
        y = v9(h, q1.qweight, q1.scales, q1.zeros, q1.group_size, None, config=config)
        x = v9(y, q2.qweight, q2.scales, q2.zeros, q2.group_size, None, config=config)
    return x, res


@pytest.mark.parametrize("config", [None, (16, 4, False), (32, 8, True)])
def test_v9_programmatic_graph_matches_eager(config, monkeypatch):
    """Captured with programmatic dependent launch (each v9 block issues its weight copies while the kernel
    before still runs) the chain gives the eager bits, replay after replay. Outputs are not poisoned here (a
    poison fill between two kernels would be an ordinary launch that hides the overlap; see test_pdl.py)."""
    import cupy
    monkeypatch.setattr(cuda, "cp", cupy)
    rng, seed = fresh_rng()
    H, links = 1024, 12
    x = cp.asarray(randn(rng, (1, H), np.float16))
    res = cp.asarray(randn(rng, (1, H), np.float16))
    norm_w = cp.asarray(randn(rng, (H,), np.float16, 0.5))
    qs = []
    for _ in range(2):
        q4 = quantize_int4(randn(rng, (H, H), np.float32, 1 / np.sqrt(H)), 128)
        qs.append(Int4Weight(cp.asarray(q4.qweight), cp.asarray(q4.scales), cp.asarray(q4.zeros), q4.group_size))
    want = [a.get() for a in chain(x, res, norm_w, *qs, config, links)]

    launched = programmatic_replays_match(lambda: chain(x, res, norm_w, *qs, config, links), want, seed,
                                          monkeypatch)
    if pdl.supported(cp.cuda.Device().id):
        assert sum("w4a16_v9" in n for n in launched) == 2 * links, launched[:6]

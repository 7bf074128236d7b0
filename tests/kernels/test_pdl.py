"""refengine/ops/pdl.py: kernels captured with programmatic dependent launch (each may start before the one
it depends on has finished) compute exactly what the same kernels compute launched one after another.

The chain below is a decode step in miniature: every kernel reads what the one before it wrote, the W4A16
GEMV loads its first weights before pdl_wait(), and 24 links give any missing wait many chances to read a
stale or half-written input. Outputs are not poisoned here: a poison fill between two kernels would be an
ordinary launch that hides the overlap under test."""

from __future__ import annotations

import numpy as np
import pytest

from refengine.quant.primitives import Int4Weight, quantize_int4
from tests.kernels.helpers import fresh_rng, programmatic_replays_match, randn, require_gpu

cp = require_gpu()
from refengine.ops import cuda, pdl  # noqa: E402


def chain(x, res, norm_w, w, q, links):
    for _ in range(links):
        h, res = cuda.add_rms_norm(x, res, norm_w, 1e-5)
        y = cuda.linear(h, w)                                  # linear v2 (M <= 8)
        x = cuda.linear_w4a16(y, q.qweight, q.scales, q.zeros, q.group_size)
    return x, res


@pytest.mark.parametrize("M", [1, 3])
def test_programmatic_chain_matches_eager(M, monkeypatch):
    import cupy
    monkeypatch.setattr(cuda, "cp", cupy)                        # undo the poisoning (see the docstring)
    rng, seed = fresh_rng()
    H = 1024
    x = cp.asarray(randn(rng, (M, H), np.float16))
    res = cp.asarray(randn(rng, (M, H), np.float16))
    norm_w = cp.asarray(randn(rng, (H,), np.float16, 0.5))
    w = cp.asarray(randn(rng, (H, H), np.float16, 1 / np.sqrt(H)))
    q4 = quantize_int4(randn(rng, (H, H), np.float32, 1 / np.sqrt(H)), 128)
    q = Int4Weight(cp.asarray(q4.qweight), cp.asarray(q4.scales), cp.asarray(q4.zeros), q4.group_size)
    want = [a.get() for a in chain(x, res, norm_w, w, q, 24)]

    launched = programmatic_replays_match(lambda: chain(x, res, norm_w, w, q, 24), want, seed, monkeypatch)
    if pdl.supported(cp.cuda.Device().id):
        assert len(launched) == 3 * 24, launched[:6]            # all three kernels of every link overlapped
    else:
        assert launched == []

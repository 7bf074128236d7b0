"""kernels_cu/rms_norm.cu: rms_norm and add_rms_norm, every version vs the reference, strided rows too."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.helpers import fresh_rng, randn, require_gpu, run_version
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import reference as ref  # noqa: E402

SHAPES = [(5, 576), (3, 1000), (4, 67), (1, 4096), (7, 8192)]


def strided(a: np.ndarray, extra: int):
    """A device view of `a` whose rows are `extra` elements further apart than their length."""
    wide = cp.asarray(np.concatenate([a, np.ones((a.shape[0], extra), a.dtype)], axis=1))
    return wide[:, :a.shape[1]]


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("stride", [0, 24])
def test_rms_norm(version, shape, dtype, stride):
    rng, seed = fresh_rng()
    x = randn(rng, shape, dtype, 3.0)
    w = (1 + 0.2 * rng.standard_normal(shape[1])).astype(dtype)
    xd = strided(x, stride) if stride else cp.asarray(x)
    got = run_version("rms_norm", version, xd, cp.asarray(w), 1e-5)
    if got is None:
        assert version == "v2"
        return
    assert_close(got, ref.rms_norm(x, w, 1e-5), "rms_norm", np.dtype(dtype).name, f"seed {seed}")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_add_rms_norm(version, shape, dtype):
    rng, seed = fresh_rng()
    x, r = randn(rng, shape, dtype, 3.0), randn(rng, shape, dtype, 3.0)
    w = (1 + 0.2 * rng.standard_normal(shape[1])).astype(dtype)
    got = run_version("add_rms_norm", version, strided(x, 8), cp.asarray(r), cp.asarray(w), 1e-6)
    if got is None:
        assert version == "v2"
        return
    # the kernel normalises the stored (rounded) sum, as transformers does in float16: feed that to the twin
    res_ref = (x.astype(np.float32) + r.astype(np.float32)).astype(dtype)
    assert_close(got[1], res_ref, "add_rms_norm", np.dtype(dtype).name, f"residual, seed {seed}")
    assert_close(got[0], ref.rms_norm(res_ref, w, 1e-6), "add_rms_norm", np.dtype(dtype).name, f"seed {seed}")
    norm_ref, _ = ref.add_rms_norm(x, r, w, 1e-6)          # and the twin itself, at float16 tolerance
    assert_close(got[0], norm_ref, "add_rms_norm", "float16", f"vs twin, seed {seed}")

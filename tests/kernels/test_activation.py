"""kernels_cu/activation.cu: silu_and_mul, every version vs the reference."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.helpers import fresh_rng, randn, require_gpu, run_version
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import reference as ref  # noqa: E402


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("T,inter", [(7, 96), (3, 67), (1, 1536), (33, 11008)])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_silu_and_mul(version, T, inter, dtype):
    rng, seed = fresh_rng()
    gu = randn(rng, (T, 2 * inter), dtype, 3.0)
    got = run_version("silu_and_mul", version, cp.asarray(gu))
    if got is None:
        assert version == "v2" and (dtype != np.float16 or inter % 8)
        return
    assert_close(got, ref.silu_and_mul(gu), "silu_and_mul", np.dtype(dtype).name, f"seed {seed}")

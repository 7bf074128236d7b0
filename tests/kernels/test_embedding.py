"""kernels_cu/embedding.cu: every version vs reference.embedding (a gather: bit-exact)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.helpers import fresh_rng, randn, require_gpu, run_version
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import cuda, reference as ref  # noqa: E402


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("hidden", [72, 67, 576])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_embedding_versions(version, hidden, dtype):
    rng, seed = fresh_rng()
    vocab, T = 101, 13
    table = randn(rng, (vocab, hidden), dtype)
    ids = rng.integers(0, vocab, T)
    got = run_version("embedding", version, cp.asarray(ids), cp.asarray(table))
    if got is None:
        assert version == "v2" and (hidden * np.dtype(dtype).itemsize) % 16, "v2 refused an aligned row"
        return
    assert got.dtype == dtype
    assert_close(got, ref.embedding(ids, table), "embedding", np.dtype(dtype).name, f"seed {seed}")


def test_embedding_public_op_uploads_host_ids():
    rng, seed = fresh_rng()
    table = randn(rng, (50, 64), np.float16)
    ids = rng.integers(0, 50, 9)
    assert_close(cuda.embedding(ids, cp.asarray(table)), ref.embedding(ids, table), "embedding", "float16")

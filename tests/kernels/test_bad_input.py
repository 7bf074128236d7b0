"""The CUDA backend refuses arguments its kernels cannot take before launching anything, with a message
that names the argument."""

from __future__ import annotations

import numpy as np
import pytest

from tests.kernels.helpers import require_gpu

cp = require_gpu()
from refengine.ops import cuda  # noqa: E402
from refengine.ops.cuda import KernelInputError  # noqa: E402

h = lambda *shape, dtype=np.float16: cp.ones(shape, dtype)
tables = lambda rows: np.zeros((rows, 1), np.int32)


@pytest.mark.parametrize("call,arg", [
    (lambda: cuda.linear(np.ones((2, 8), np.float16), h(4, 8)), "x"),
    (lambda: cuda.linear(h(2, 8), h(4, 9)), "weight"),
    (lambda: cuda.linear(h(2, 8), h(4, 8, dtype=np.float32)), "weight"),
    (lambda: cuda.linear(h(2, 8), h(4, 8), h(5)), "bias"),
    (lambda: cuda.linear(h(2, 8, dtype=np.int32), h(4, 8)), "x"),
    (lambda: cuda.linear_w4a16(h(1, 64), cp.ones((4, 8), cp.uint32), h(4, 2), h(4, 2), 48), "group_size"),
    (lambda: cuda.linear_w4a16(h(1, 64), cp.ones((4, 8), cp.uint32), h(4, 1), h(4, 2), 32), "scales"),
    (lambda: cuda.linear_w4a16(h(1, 64), cp.ones((4, 8), cp.int32), h(4, 2), h(4, 2), 32), "qweight"),
    (lambda: cuda.linear_w4a16(h(1, 60), cp.ones((4, 8), cp.uint32), h(4, 2), h(4, 2), 32), "qweight"),
    (lambda: cuda.rms_norm(h(3, 8), h(7), 1e-5), "weight"),
    (lambda: cuda.add_rms_norm(h(3, 8), h(3, 9), h(8), 1e-5), "residual"),
    (lambda: cuda.silu_and_mul(h(3, 7)), "gate_up"),
    (lambda: cuda.rotary_embedding(h(3, 2, 7), np.arange(3), np.ones(3, np.float32)), "x"),
    (lambda: cuda.rotary_embedding(h(3, 2, 8), np.arange(4), np.ones(4, np.float32)), "positions"),
    (lambda: cuda.rotary_embedding(h(3, 2, 8), np.arange(3), np.ones(3, np.float32)), "inv_freq"),
    (lambda: cuda.write_kv_cache(h(3, 2, 8), h(3, 2, 8), h(4, 4, 2, 8), h(4, 4, 2, 8), np.arange(2)), "slot_mapping"),
    (lambda: cuda.write_kv_cache(h(3, 2, 8, dtype=np.float32), h(3, 2, 8), h(4, 4, 2, 8), h(4, 4, 2, 8),
                                 np.arange(3)), "k"),
    (lambda: cuda.paged_attention(h(3, 4, 8), h(4, 4, 2, 8), h(4, 4, 2, 8), tables(2), [3, 3], [0, 3], 1.0),
     "cu_seqlens_q"),
    (lambda: cuda.paged_attention(h(3, 3, 8), h(4, 4, 2, 8), h(4, 4, 2, 8), tables(1), [3], [0, 3], 1.0), "q"),
    (lambda: cuda.paged_attention(h(3, 4, 8), h(4, 4, 2, 8), h(4, 4, 2, 16), tables(1), [3], [0, 3], 1.0), "v_cache"),
    (lambda: cuda.copy_blocks([h(4, 4, 2, 8)], [h(4, 4, 2, 8)], [0], [9]), "dst"),
    (lambda: cuda.embedding(np.zeros(3, np.float32), h(10, 8)), "ids"),
    (lambda: cuda.sample_rows(h(2, 10, dtype=np.float32), [1.0], [0, 0], [1, 1], [0, 0], [0.5, 0.5]), "temperature"),
])
def test_refused_with_the_argument_named(call, arg):
    with pytest.raises(KernelInputError, match=f"argument '{arg}'"):
        call()

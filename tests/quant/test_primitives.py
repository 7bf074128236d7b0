"""int4 group quantization and packing: exact round trips and the half-step error bound."""

from types import SimpleNamespace

import numpy as np
import pytest

from refengine.errors import RefengineError
from refengine.quant.primitives import (dequantize_codes, dequantize_int4, fake_quantize, group_size_fit,
                                        pack_int4, quantize_groups, quantize_int4, unpack_int4)


def test_pack_unpack_round_trips_exactly():
    q = np.random.default_rng(0).integers(0, 16, size=(37, 136)).astype(np.uint8)
    packed = pack_int4(q)
    assert packed.dtype == np.uint32 and packed.shape == (37, 17)
    np.testing.assert_array_equal(unpack_int4(packed), q)


def test_packing_order_is_lowest_nibble_first():
    q = np.arange(8, dtype=np.uint8)[None, :] + 1           # codes 1..8 in one word
    assert int(pack_int4(q)[0, 0]) == 0x87654321


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_dequantization_error_is_at_most_half_a_step(group_size):
    rng = np.random.default_rng(group_size)
    w = (rng.standard_normal((29, 4 * group_size)) * rng.uniform(0.01, 3, size=(29, 1))).astype(np.float32)
    q, scales, zeros = quantize_groups(w, group_size)
    err = np.abs(dequantize_codes(q, scales, zeros, group_size) - w).reshape(29, -1, group_size)
    assert np.all(err <= scales[..., None] / 2 + 1e-6 * np.abs(w).max())
    assert q.min() >= 0 and q.max() <= 15 and np.all(zeros == np.rint(zeros))


def test_int4_weight_equals_fake_quantization():
    w = np.random.default_rng(3).standard_normal((64, 256)).astype(np.float32)
    packed = quantize_int4(w, 64)
    np.testing.assert_array_equal(dequantize_int4(packed), fake_quantize(w, 64))
    assert packed.shape == (64, 256) and packed.scales.dtype == np.float16


def test_group_size_must_divide_the_input_dimension():
    with pytest.raises(RefengineError, match="does not divide"):
        quantize_int4(np.ones((4, 576), np.float32), 128)
    with pytest.raises(RefengineError, match="not supported"):
        quantize_int4(np.ones((4, 576), np.float32), 48)


def test_group_size_fit_names_the_first_width_it_does_not_divide():
    # hidden 192, attention 3 × 64 = 192, MLP 320: 32 and 64 divide all three; 128 fails first on hidden
    cfg = SimpleNamespace(hidden_size=192, q_size=192, intermediate_size=320)
    fit = group_size_fit(cfg, 128)
    assert fit.fitting == (32, 64) and fit.misfit == ("hidden size", 192)
    assert [w for _, w in fit.widths] == [192, 192, 320]
    assert group_size_fit(cfg, 64).misfit is None
    assert group_size_fit(SimpleNamespace(hidden_size=256, q_size=256, intermediate_size=96), 64).misfit == \
        ("intermediate size", 96)
    assert group_size_fit(SimpleNamespace(hidden_size=80, q_size=128, intermediate_size=80), 32).fitting == ()

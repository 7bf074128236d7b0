"""Shards of float and int4 weights: the rows / columns each rank should hold, in the fused layout, and the
row-parallel partial products summing to the whole linear."""

import numpy as np
import pytest

from refengine.config import ModelConfig
from refengine.model.weights import LayerWeights, ModelWeights
from refengine.parallel import TensorParallelError, make_plan, shard_weights
from refengine.parallel.shard import take_cols
from refengine.quant.primitives import Int4Weight, dequantize_int4, quantize_int4

CFG = ModelConfig(family="llama", hidden_size=64, num_layers=1, num_heads=8, num_kv_heads=2, head_dim=16,
                  intermediate_size=128, vocab_size=37)


def weights(group_size=None, seed=0) -> ModelWeights:
    rng = np.random.default_rng(seed)
    f = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    q = (lambda w: quantize_int4(w, group_size)) if group_size else (lambda w: w)
    c = CFG
    layer = LayerWeights(f(c.hidden_size), q(f(c.qkv_size, c.hidden_size)), f(c.qkv_size),
                         q(f(c.hidden_size, c.q_size)), f(c.hidden_size), f(c.hidden_size),
                         q(f(2 * c.intermediate_size, c.hidden_size)), f(2 * c.intermediate_size),
                         q(f(c.hidden_size, c.intermediate_size)), f(c.hidden_size))
    return ModelWeights(f(c.vocab_size, c.hidden_size), f(c.hidden_size), f(c.vocab_size, c.hidden_size), [layer])


def dense(w):
    return dequantize_int4(w) if isinstance(w, Int4Weight) else w


@pytest.mark.parametrize("tp", [2, 4])
@pytest.mark.parametrize("group_size", [None, 32])
def test_each_rank_holds_its_heads_and_channels(tp, group_size):
    full = weights(group_size)
    plan, layer = make_plan(CFG, tp, group_size), full.layers[0]
    D, H, KVH, I = CFG.head_dim, CFG.num_heads, CFG.num_kv_heads, CFG.intermediate_size
    qkv = dense(layer.qkv).reshape(H + 2 * KVH, D, -1)                  # [heads, D, hidden]
    gate, up = np.split(dense(layer.gate_up), 2)
    for r in range(tp):
        s, got = plan.shard(r), shard_weights(full, plan, r).layers[0]
        q_heads, kv_heads = list(s.q_heads), list(s.kv_heads)
        want_qkv = np.concatenate([qkv[q_heads], qkv[[H + h for h in kv_heads]], qkv[[H + KVH + h for h in kv_heads]]])
        np.testing.assert_array_equal(dense(got.qkv), want_qkv.reshape(-1, CFG.hidden_size))   # q | k | v kept
        cols = slice(s.inter.start, s.inter.stop)
        np.testing.assert_array_equal(dense(got.gate_up), np.concatenate([gate[cols], up[cols]]))
        np.testing.assert_array_equal(dense(got.o), dense(layer.o)[:, q_heads[0] * D:(q_heads[-1] + 1) * D])
        np.testing.assert_array_equal(dense(got.down), dense(layer.down)[:, cols])
        assert (got.o_bias is not None, got.down_bias is not None) == (r == 0, r == 0)   # added once
        heads = q_heads + [H + h for h in kv_heads] + [H + KVH + h for h in kv_heads]
        np.testing.assert_array_equal(got.qkv_bias, layer.qkv_bias.reshape(H + 2 * KVH, D)[heads].reshape(-1))
        np.testing.assert_array_equal(got.gate_up_bias, np.concatenate(
            [layer.gate_up_bias[cols], layer.gate_up_bias[I:][cols]]))
        if group_size:                      # still packed: the kernels get int4 shards, not dense copies
            assert all(isinstance(w, Int4Weight) for w in (got.qkv, got.o, got.gate_up, got.down))


@pytest.mark.parametrize("group_size", [None, 32])
def test_row_parallel_partials_sum_to_the_whole(group_size):
    full, tp = weights(group_size, seed=1), 4
    plan = make_plan(CFG, tp, group_size)
    x = np.random.default_rng(2).standard_normal((5, CFG.intermediate_size)).astype(np.float32)
    whole = x @ dense(full.layers[0].down).T
    shares = [slice(plan.shard(r).inter.start, plan.shard(r).inter.stop) for r in range(tp)]
    parts = [x[:, share] @ dense(shard_weights(full, plan, r).layers[0].down).T for r, share in enumerate(shares)]
    np.testing.assert_allclose(sum(parts), whole, rtol=1e-5, atol=1e-4)


def test_lm_head_blocks_are_padded_with_zero_rows():
    full, tp = weights(), 4                   # vocab 37 -> blocks of 10, the last holding 7 real rows
    plan = make_plan(CFG, tp)
    blocks = [shard_weights(full, plan, r).lm_head for r in range(tp)]
    assert all(b.shape == (10, CFG.hidden_size) for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks)[:37], full.lm_head)
    assert not np.concatenate(blocks)[37:].any()


def test_int4_cut_off_a_group_boundary_is_refused():
    w = quantize_int4(np.ones((4, 128), np.float32), 32)
    with pytest.raises(TensorParallelError, match="group"):
        take_cols(w, range(16, 48), "layer 0 down_proj")
    got = take_cols(w, range(32, 96), "layer 0 down_proj")
    np.testing.assert_array_equal(dequantize_int4(got), dequantize_int4(w)[:, 32:96])

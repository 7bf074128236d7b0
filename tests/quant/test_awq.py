"""AWQ's pieces: the search wins where it should, folding is exact, the clip objective is exact, and the
calibration block runner computes what the model computes."""

import dataclasses

import numpy as np
import pytest

from refengine import ops
from refengine.model.hf import load_hf_config, load_hf_weights
from refengine.quant.awq import (SCALE_GROUPS, candidate_scale, fake_quantize_lean, fake_quantize_scaled, fold_scale,
                                 search_clip, search_scale, weight_mean)
from refengine.quant.block import CalibrationOps, BlockRunner, causal_attention
from refengine.quant.primitives import fake_quantize
from refengine.quant.stats import InputStats
from tests.hf_models import make_tiny_model
from tests.tolerances import assert_close

G = 32


def outlier_layer(seed=0, tokens=512, width=256, out=64):
    """A linear whose inputs have a few channels 30× larger than the rest (what AWQ is built for)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, width)).astype(np.float32)
    salient = rng.choice(width, size=4, replace=False)
    x[:, salient] *= 30
    w = (rng.standard_normal((out, width)) / np.sqrt(width)).astype(np.float32)
    return x, w


def output_mse(x, w, w_q):
    return float(np.mean((x @ w_q.T - x @ w.T) ** 2))


def test_awq_scales_beat_rtn_on_outlier_channels_and_a_no_op_is_rtn():
    x, w = outlier_layer()
    rtn = output_mse(x, w, fake_quantize(w, G))
    # a no-op (s = 1) through the AWQ path is exactly RTN: any gain below comes from the scales
    assert output_mse(x, w, fake_quantize_scaled(w, np.ones(w.shape[1], np.float32), G)) == rtn
    loss = lambda s: output_mse(x, w, fake_quantize_scaled(w, s, G))
    s, ratio, losses = search_scale(loss, np.abs(x).mean(axis=0), weight_mean(w, G), search=True)
    assert ratio is not None and losses[ratio] == min(losses.values()) and losses[None] == rtn
    assert loss(s) < 0.5 * rtn, (loss(s), rtn)
    fixed, r, _ = search_scale(None, np.abs(x).mean(axis=0), weight_mean(w, G), search=False)
    assert r == 0.5 and loss(fixed) < rtn          # LMDeploy's fast smoothing helps too, less


def test_lean_fake_quantize_is_primitives_fake_quantize_bit_for_bit():
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((48, 256)) * rng.uniform(0.01, 4, (48, 1))).astype(np.float32)
    w[3, :32] = np.abs(w[3, :32])                      # a group with no negative weight
    shrink = rng.uniform(0.5, 1, (48, 256 // G)).astype(np.float32)
    np.testing.assert_array_equal(fake_quantize_lean(w, G), fake_quantize(w, G))
    np.testing.assert_array_equal(fake_quantize_lean(w, G, shrink), fake_quantize(w, G, shrink))


def test_candidate_scale_is_normalised():
    rng = np.random.default_rng(1)
    s = candidate_scale(rng.uniform(0.01, 5, 64).astype(np.float32), rng.uniform(0.1, 1, 64).astype(np.float32), 0.4)
    assert s.dtype == np.float32 and np.isclose(s.max() * s.min(), 1.0, rtol=1e-5)


def test_clip_objective_from_the_gram_matrix_is_the_output_error():
    x, w = outlier_layer(seed=2)
    stats = InputStats(G, keep=0)
    for part in np.array_split(x, 3):                       # streamed in batches
        stats.add(part)
    shrink = search_clip(w, stats.gram, G)
    assert shrink.shape == (w.shape[0], w.shape[1] // G) and shrink.min() >= 0.5 and shrink.max() <= 1.0
    # per (row, group): the Gram form equals the mean squared output contribution over the tokens
    delta = w - fake_quantize(w, G, shrink)
    direct = np.mean((x.reshape(len(x), -1, G)[:, None] * delta.reshape(w.shape[0], -1, G)[None]).sum(-1) ** 2, axis=0)
    d = delta.reshape(w.shape[0], -1, G).transpose(1, 0, 2)
    via_gram = ((d @ stats.gram) * d).sum(-1).T
    np.testing.assert_allclose(via_gram, direct, rtol=2e-3, atol=1e-7)
    # the search never does worse than no clipping, and here it does better
    assert output_mse(x, w, fake_quantize(w, G, shrink)) < output_mse(x, w, fake_quantize(w, G))


def test_input_stats_streamed_equal_one_shot_and_follow_a_folded_scale():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 64)).astype(np.float32)
    s = rng.uniform(0.5, 2, 64).astype(np.float32)
    streamed, whole = InputStats(G, keep=100), InputStats(G, keep=100)
    for part in np.array_split(x, 4):
        streamed.add(part)
    whole.add(x / s)
    streamed.scale_inputs(s)
    np.testing.assert_allclose(streamed.mean_abs, whole.mean_abs, rtol=1e-5)
    np.testing.assert_allclose(streamed.gram, whole.gram, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(streamed.sample, whole.sample, rtol=1e-6)
    assert streamed.sample.shape == (100, 64)


@pytest.mark.parametrize("heads, kv_heads", [(6, 2), (4, 4)])
def test_batched_causal_attention_is_the_reference_paged_attention(heads, kv_heads):
    rng = np.random.default_rng(heads)
    B, S, D = 3, 21, 8
    q = rng.standard_normal((B * S, heads, D)).astype(np.float32)
    k, v = (rng.standard_normal((B, S, kv_heads, D)).astype(np.float32) for _ in range(2))
    args = (np.arange(B, dtype=np.int32)[:, None], np.full(B, S), np.arange(B + 1) * S, 0.35)
    ref = ops.reference.paged_attention(q, k, v, *args)
    for chunk in (128, 8, 5):              # one chunk, and query chunks that skip masked keys (S % 8 != 0)
        got = causal_attention(q.reshape(B, S, heads, D), k, v, 0.35, chunk=chunk)
        assert_close(got, ref, "paged_attention", "float32")
    assert_close(CalibrationOps(ops.reference).paged_attention(q, k, v, *args), ref, "paged_attention")
    # not the rectangular layout (the last sequence 4 tokens shorter): the backend's own op answers
    short = (args[0], np.array([S, S, S - 4]), np.array([0, S, 2 * S, 3 * S - 4]), args[3])
    assert_close(CalibrationOps(ops.reference).paged_attention(q[:-4], k, v, *short),
                 ops.reference.paged_attention(q[:-4], k, v, *short), "paged_attention")


@pytest.fixture(scope="module")
def tiny_mha(tmp_path_factory):
    """A tiny multi-head model with biases (so every scale group applies, v -> o included)."""
    path, _ = make_tiny_model("llama-bias", tmp_path_factory.mktemp("mha"), num_key_value_heads=4)
    cfg, family = load_hf_config(path)
    return cfg, load_hf_weights(path, cfg, family).astype(np.float32)


def test_block_runner_forward_is_one_layer_of_the_model(tiny_mha):
    from refengine.engine.kv_cache import KVCache
    from refengine.model.llama import ForwardBatch, LlamaModel
    cfg, weights = tiny_mha
    ids = np.random.default_rng(4).integers(0, cfg.vocab_size, size=(2, 16))
    model = LlamaModel(cfg, weights, ops.reference)
    hidden = []
    for row in ids:       # the model's own residual stream after layer 0, one sequence at a time
        states = []
        model.forward(ForwardBatch.single(row, 0, [0], 16), KVCache.allocate(cfg, 1, 16), hidden_states=states)
        hidden.append(states[:2])
    runner = BlockRunner(cfg, ops.reference, seqlen=16)
    block = runner.model(weights.layers[0])
    got = runner.forward(block, np.concatenate([h[0] for h in hidden]))
    assert_close(got, np.concatenate([h[1] for h in hidden]), "logits_self", "float32")


def test_folding_any_scale_leaves_the_block_output_unchanged(tiny_mha):
    cfg, weights = tiny_mha
    rng = np.random.default_rng(5)
    runner = BlockRunner(cfg, ops.reference, seqlen=8)
    hidden = rng.standard_normal((3 * 8, cfg.hidden_size)).astype(np.float32)
    layer = weights.layers[1]
    before = runner.forward(runner.model(layer), hidden)
    assert all(g.applies(cfg) for g in SCALE_GROUPS)
    for group in SCALE_GROUPS:
        width = getattr(layer, group.linear).shape[1]
        layer = fold_scale(layer, group, rng.uniform(0.3, 3, width).astype(np.float32), cfg)
    after = runner.forward(runner.model(layer), hidden)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    assert not np.allclose(layer.qkv, weights.layers[1].qkv)      # the weights did change


def test_v_to_o_is_skipped_under_grouped_query_attention():
    cfg = dataclasses.make_dataclass("C", [("num_heads", int), ("num_kv_heads", int)])
    assert [g.applies(cfg(8, 2)) for g in SCALE_GROUPS] == [True, False, True, True]
    assert all(g.applies(cfg(8, 8)) for g in SCALE_GROUPS)


@pytest.mark.parametrize("quantized_inputs", [False, True])
def test_awq_runs_with_the_gpu_backends_dtype_rules(tmp_path, quantized_inputs):
    """The CUDA backend computes in float16 and refuses a float32 activation against a float16 weight:
    the whole AWQ walk under those rules (StrictFloat16Ops) gives finite int4 blocks on host arrays."""
    from refengine.quant.awq import AwqOptions
    from refengine.quant.primitives import Int4Weight
    from refengine.quant.quantize import awq_layers, dequantized_layer, float32_layer
    from refengine.workspace.source import open_source
    from tests.quant.strict_fp16_ops import StrictFloat16Ops
    path, _ = make_tiny_model("llama-bias", tmp_path, num_key_value_heads=4)
    source = open_source(str(path))
    ids = np.random.default_rng(6).integers(0, source.config.vocab_size, size=(3, 16))
    opts = AwqOptions(group_size=G, quantized_inputs=quantized_inputs)
    blocks = list(awq_layers(source, ids, opts, StrictFloat16Ops(), batch_size=2))
    assert [i for i, _, _ in blocks] == list(range(source.config.num_layers))
    runner = BlockRunner(source.config, ops.reference, 16)
    x = np.random.default_rng(1).standard_normal((32, source.config.hidden_size)).astype(np.float32)
    for i, layer, _ in blocks:
        assert isinstance(layer.o, Int4Weight) and isinstance(layer.o.qweight, np.ndarray)
        assert np.isfinite(layer.o.scales).all() and layer.attn_norm.dtype == np.float32
        # the int4 block computes what the float block does, up to 4-bit error (~17% here; zeros give 100%)
        float_out = runner.forward(runner.model(float32_layer(source.layer(i))), x)
        int4_out = runner.forward(runner.model(float32_layer(dequantized_layer(layer))), x)
        rms = lambda a: float(np.sqrt(np.mean(a * a)))
        assert rms(int4_out - float_out) < 0.35 * rms(float_out - x)


def test_calibration_inputs_float_or_quantized_differ_from_the_second_block_on(tmp_path):
    """Block 0 sees the embeddings either way; block 1 sees the float block 0's output or the int4 one's."""
    from refengine.quant.awq import AwqOptions
    from refengine.quant.quantize import awq_layers
    from refengine.workspace.source import open_source
    path, _ = make_tiny_model("llama-bias", tmp_path, num_key_value_heads=4)
    source = open_source(str(path))
    ids = np.random.default_rng(7).integers(0, source.config.vocab_size, size=(3, 16))
    runs = [list(awq_layers(source, ids, AwqOptions(group_size=G, quantized_inputs=q), ops.reference, 2))
            for q in (False, True)]
    (_, float0, _), (_, quant0, _) = runs[0][0], runs[1][0]
    (_, float1, _), (_, quant1, _) = runs[0][1], runs[1][1]
    assert np.array_equal(float0.qkv.qweight, quant0.qkv.qweight) and np.array_equal(float0.o.scales, quant0.o.scales)
    assert not (np.array_equal(float1.mlp_norm, quant1.mlp_norm)
                and np.array_equal(float1.down.scales, quant1.down.scales))

"""A model whose four linears are packed int4 computes exactly what the float model computes with the
fake-quantized (quantize → dequantize) weights."""

import dataclasses

import numpy as np

from refengine import ops
from refengine.engine.kv_cache import KVCache
from refengine.model.hf import load_hf_config, load_hf_weights
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.quant.primitives import fake_quantize, quantize_int4
from tests.hf_models import make_tiny_model
from tests.tolerances import assert_close

LINEARS = ("qkv", "o", "gate_up", "down")


def test_int4_linears_equal_the_fake_quant_reference(tmp_path):
    path, _ = make_tiny_model("llama-bias", tmp_path)
    cfg, family = load_hf_config(path)
    weights = load_hf_weights(path, cfg, family).astype(np.float32)
    packed = dataclasses.replace(weights, layers=[
        dataclasses.replace(l, **{n: quantize_int4(getattr(l, n), 32) for n in LINEARS}) for l in weights.layers])
    faked = dataclasses.replace(weights, layers=[
        dataclasses.replace(l, **{n: fake_quantize(getattr(l, n), 32) for n in LINEARS}) for l in weights.layers])
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=19)

    def logits(w):
        kv = KVCache.allocate(cfg, 4, 8)
        model = LlamaModel(cfg, w, ops.get_backend("numpy"))
        return model.forward(ForwardBatch.single(ids, 0, np.arange(4), 8, all_logits=True), kv)
    got, ref, dense = logits(packed), logits(faked), logits(weights)
    assert_close(got, ref, "logits_self", "float32")
    assert np.abs(dense - ref).max() > 1e-3      # the quantization is real: the float model differs

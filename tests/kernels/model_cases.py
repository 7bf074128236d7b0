"""Random-weight models for the GPU model tests and the benchmark (no torch needed)."""

from __future__ import annotations

import numpy as np

from refengine.config import ModelConfig
from refengine.model.weights import LayerWeights, ModelWeights
from refengine.quant.primitives import quantize_int4

# the default model's shape (SmolLM2-135M): hidden 576, 30 layers, 9 heads, 3 KV heads, FFN 1536, tied
DEFAULT_SHAPE = dict(family="llama", hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                     intermediate_size=1536, vocab_size=49152, rms_norm_eps=1e-5, rope_theta=100000.0,
                     max_position_embeddings=8192, tie_word_embeddings=True)


def random_weights(cfg: ModelConfig, seed: int = 0, group_size: int | None = None) -> ModelWeights:
    """Weights scaled like a trained model's (unit-variance activations, logits of std ~3); with group_size,
    the four linears of each layer are int4 (W4A16)."""
    rng = np.random.default_rng(seed)
    lin = lambda o, i, gain=1.0: (rng.standard_normal((o, i)) * gain / np.sqrt(i)).astype(np.float32)
    quant = (lambda w: quantize_int4(w, group_size)) if group_size else (lambda w: w)
    norm = lambda: (1 + 0.1 * rng.standard_normal(cfg.hidden_size)).astype(np.float32)
    layers = [LayerWeights(norm(), quant(lin(cfg.qkv_size, cfg.hidden_size, 1.5)), None,
                           quant(lin(cfg.hidden_size, cfg.q_size)), None, norm(),
                           quant(lin(2 * cfg.intermediate_size, cfg.hidden_size)), None,
                           quant(lin(cfg.hidden_size, cfg.intermediate_size)), None) for _ in range(cfg.num_layers)]
    # tied: the embedding is also the LM head, so its scale sets the logits' (std 3 / sqrt(hidden) -> ~3)
    embed_std = 3.0 / np.sqrt(cfg.hidden_size) if cfg.tie_word_embeddings else 1.0
    embed = (rng.standard_normal((cfg.vocab_size, cfg.hidden_size)) * embed_std).astype(np.float32)
    lm_head = embed if cfg.tie_word_embeddings else lin(cfg.vocab_size, cfg.hidden_size, 3.0)
    return ModelWeights(embed, norm(), lm_head, layers)

"""Helpers for the engine tests: a tiny random Llama in NumPy (no torch, builds in milliseconds), a
character-level tokenizer with a toy chat template, and an independent reference: one full-prefill
forward pass per position on a fresh KV cache, with no scheduler and no block manager."""

from __future__ import annotations

import numpy as np

from refengine.config import EngineConfig, ModelConfig
from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.model.weights import LayerWeights, ModelWeights
from refengine.ops import reference

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?:\n"
EOS, BOS = 0, 1
VOCAB = 2 + len(CHARS)


def tiny_config(**overrides) -> ModelConfig:
    kw = dict(family="llama", hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
              intermediate_size=48, vocab_size=VOCAB, max_position_embeddings=256, rms_norm_eps=1e-5)
    return ModelConfig(**{**kw, **overrides})


def tiny_model(seed: int = 0, **overrides) -> LlamaModel:
    """Random weights scaled so that logits are spread (std ~3): greedy choices are clear, not ties."""
    cfg = tiny_config(**overrides)
    rng = np.random.default_rng(seed)
    lin = lambda out, inp, gain=1.0: (rng.standard_normal((out, inp)) * gain / np.sqrt(inp)).astype(np.float32)
    norm = lambda: (1 + 0.2 * rng.standard_normal(cfg.hidden_size)).astype(np.float32)
    layers = [LayerWeights(norm(), lin(cfg.qkv_size, cfg.hidden_size, 1.5), None, lin(cfg.hidden_size, cfg.q_size),
                           None, norm(), lin(2 * cfg.intermediate_size, cfg.hidden_size), None,
                           lin(cfg.hidden_size, cfg.intermediate_size), None) for _ in range(cfg.num_layers)]
    embed = rng.standard_normal((cfg.vocab_size, cfg.hidden_size)).astype(np.float32)
    weights = ModelWeights(embed, norm(), lin(cfg.vocab_size, cfg.hidden_size, 3.0), layers)
    return LlamaModel(cfg, weights, reference)


def engine_config(num_blocks: int = 64, block_size: int = 4, **kw) -> EngineConfig:
    return EngineConfig(cache_max_entry_count=num_blocks, cache_block_seq_len=block_size, **kw)


def reference_logits(model: LlamaModel, ids) -> np.ndarray:
    """Logits [len(ids), V] of one full prefill on a fresh cache: the independent computation."""
    bs = 16
    kv = KVCache.allocate(model.cfg, -(-len(ids) // bs), bs)
    return model.forward(ForwardBatch.single(list(ids), 0, np.arange(kv.num_blocks), bs, all_logits=True), kv)


def reference_greedy(model: LlamaModel, prompt, max_new_tokens: int, stop_ids=()) -> list[int]:
    """Greedy continuation by re-running the whole prefix each token (slow, but shares nothing with the engine)."""
    ids, out = list(prompt), []
    for _ in range(max_new_tokens):
        token = int(np.argmax(reference_logits(model, ids)[-1]))
        out.append(token)
        ids.append(token)
        if token in stop_ids:
            break
    return out


class CharTokenizer:
    """One token per character of CHARS; 0 = <eos> (special), 1 = <bos>. Chat template: 'u:…\\na:'."""

    eos_token_ids = [EOS]
    stop_token_ids = [EOS]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [2 + CHARS.index(c) for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        special = {EOS: "<eos>", BOS: "<bos>"}
        return "".join(("" if skip_special_tokens else special[i]) if i in special else CHARS[i - 2]
                       for i in map(int, ids))

    def render_chat(self, messages, add_generation_prompt: bool = True) -> str:
        text = "".join(f"{m['role'][0]}:{m['content']}\n" for m in messages)
        return text + ("a:" if add_generation_prompt else "")

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> list[int]:
        return self.encode(self.render_chat(messages, add_generation_prompt))

"""The in-memory weights of a Llama-family model, fused the way the forward pass consumes them.

Every linear is stored as Hugging Face does, [out_features, in_features]; y = x @ W.T + b. In an int4
workspace the four linears (qkv, o, gate_up, down) are `Int4Weight`s of the same logical shape instead.

    qkv     [(H + 2·KVH)·D, hidden]   rows: q heads | k heads | v heads   (one matmul for all three)
    gate_up [2·I, hidden]             rows: gate | up                      (one matmul for both)

Loaders (HF safetensors, GGUF) only have to say how to fetch a tensor by role; `assemble_weights`
does the fusing, the bias bookkeeping and the shape checks for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from refengine.config import ModelConfig
from refengine.errors import ModelLoadError
from refengine.quant.primitives import Int4Weight


@dataclass
class LayerWeights:
    attn_norm: np.ndarray               # [hidden]
    qkv: np.ndarray                     # [(H + 2KVH)·D, hidden]
    qkv_bias: np.ndarray | None         # [(H + 2KVH)·D]
    o: np.ndarray                       # [hidden, H·D]
    o_bias: np.ndarray | None           # [hidden]
    mlp_norm: np.ndarray                # [hidden]
    gate_up: np.ndarray                 # [2I, hidden]
    gate_up_bias: np.ndarray | None     # [2I]
    down: np.ndarray                    # [hidden, I]
    down_bias: np.ndarray | None        # [hidden]

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class ModelWeights:
    embed: np.ndarray                   # [vocab, hidden]
    final_norm: np.ndarray              # [hidden]
    lm_head: np.ndarray                 # [vocab, hidden]  (the same array as `embed` when tied)
    layers: list[LayerWeights]

    def astype(self, dtype) -> "ModelWeights":
        """A copy in `dtype` (the tie between embed and lm_head is kept: one array, not two)."""
        cast = lambda a: a if a is None or isinstance(a, Int4Weight) else np.ascontiguousarray(a, dtype=dtype)
        embed = cast(self.embed)
        lm_head = embed if self.lm_head is self.embed else cast(self.lm_head)
        layers = [LayerWeights(**{k: cast(v) for k, v in vars(l).items()}) for l in self.layers]
        return ModelWeights(embed, cast(self.final_norm), lm_head, layers)

    def dequantized(self) -> "ModelWeights":
        """The same weights with every Int4Weight linear dequantized to float32 (other arrays shared)."""
        from refengine.quant.primitives import dequantize_int4
        dense = lambda a: dequantize_int4(a) if isinstance(a, Int4Weight) else a
        layers = [LayerWeights(**{k: dense(v) for k, v in vars(l).items()}) for l in self.layers]
        return ModelWeights(self.embed, self.final_norm, self.lm_head, layers)


# fetch(role, layer) -> array or None.  layer is None for the global roles embed / final_norm / lm_head.
Fetch = Callable[[str, "int | None"], "np.ndarray | None"]


def concat_rows(parts: list) -> "np.ndarray | Int4Weight":
    """Fuse linears along their output rows: arrays, or Int4Weights of one group size (an AWQ checkpoint),
    whose qweight / scales / zeros are all row-major by output feature and so stack the same way."""
    packed = [isinstance(p, Int4Weight) for p in parts]
    if not any(packed):
        return np.concatenate(parts, axis=0)
    if not all(packed) or len({p.group_size for p in parts}) != 1:
        raise ModelLoadError("linears fused into one (q/k/v or gate/up) mix int4 and float weights or group "
                             "sizes: not supported")
    return Int4Weight(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("qweight", "scales", "zeros")),
                      parts[0].group_size)


def _expect(arr, shape, what):
    if arr is None:
        raise ModelLoadError(f"missing weight: {what}")
    if tuple(arr.shape) != tuple(shape):
        raise ModelLoadError(f"weight {what} has shape {tuple(arr.shape)}, expected {tuple(shape)}")
    return arr


def assemble_layer(cfg: ModelConfig, fetch: Fetch, i: int, split_qkv=None) -> LayerWeights:
    hid, inter = cfg.hidden_size, cfg.intermediate_size
    get = lambda role, shape: _expect(fetch(role, i), shape, f"layer {i} {role}")
    if split_qkv is not None:
        fused = get("qkv", (cfg.qkv_size, hid))
        q, k, v = split_qkv(fused, cfg)
        biases = split_qkv(get("qkv_bias", (cfg.qkv_size,)), cfg) if cfg.qkv_bias else None
    else:
        q, k, v = get("q", (cfg.q_size, hid)), get("k", (cfg.kv_size, hid)), get("v", (cfg.kv_size, hid))
        biases = None
        if cfg.qkv_bias:
            biases = (get("q_bias", (cfg.q_size,)), get("k_bias", (cfg.kv_size,)), get("v_bias", (cfg.kv_size,)))
    mlp_bias = cfg.mlp_bias
    return LayerWeights(
        attn_norm=get("attn_norm", (hid,)),
        qkv=concat_rows([q, k, v]),
        qkv_bias=None if biases is None else np.concatenate(biases),
        o=get("o", (hid, cfg.q_size)),
        o_bias=get("o_bias", (hid,)) if cfg.o_bias else None,
        mlp_norm=get("mlp_norm", (hid,)),
        gate_up=concat_rows([get("gate", (inter, hid)), get("up", (inter, hid))]),
        gate_up_bias=np.concatenate([get("gate_bias", (inter,)), get("up_bias", (inter,))]) if mlp_bias else None,
        down=get("down", (hid, inter)),
        down_bias=get("down_bias", (hid,)) if mlp_bias else None,
    )


def assemble_weights(cfg: ModelConfig, fetch: Fetch, split_qkv=None, progress=None) -> ModelWeights:
    """Fetch every role, fuse qkv and gate_up, check every shape."""
    embed = _expect(fetch("embed", None), (cfg.vocab_size, cfg.hidden_size), "embed_tokens")
    lm_head = embed if cfg.tie_word_embeddings else _expect(fetch("lm_head", None), embed.shape, "lm_head")
    layers = []
    for i in range(cfg.num_layers):
        layers.append(assemble_layer(cfg, fetch, i, split_qkv))
        if progress:
            progress(i + 1, cfg.num_layers)
    final_norm = _expect(fetch("final_norm", None), (cfg.hidden_size,), "final norm")
    return ModelWeights(embed, final_norm, lm_head, layers)

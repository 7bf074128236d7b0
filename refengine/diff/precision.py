"""Rounding refengine's weights to the precision the reference computes in.

With --dtype float16 / bfloat16, transformers loads the weights in that dtype and computes in it. refengine's
NumPy backend always computes in float32, so here the weights are rounded to the same dtype and widened back:
both sides then hold bit-identical weights, and what the diff measures is transformers' half-precision
arithmetic against refengine's float32 arithmetic on them.
"""

from __future__ import annotations

import numpy as np

from refengine.model.weights import LayerWeights, ModelWeights
from refengine.quant.primitives import Int4Weight


def round_to(a: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values of `a` rounded (to nearest, ties to even, as torch's .to() does) to `dtype`."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if dtype == "float32":
        return a
    if dtype == "float16":
        return a.astype(np.float16).astype(np.float32)
    if dtype == "bfloat16":                       # NumPy has no bfloat16: keep the top 16 bits of float32
        bits = a.view(np.uint32)
        rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
        return ((bits + rounding) & np.uint32(0xFFFF0000)).view(np.float32)
    raise ValueError(f"unknown dtype {dtype!r}")


def round_weights(w: ModelWeights, dtype: str) -> ModelWeights:
    """A copy of `w` with every dense array rounded to `dtype` (int4 weights are left as they are; the
    tie between embed and lm_head is kept)."""
    if dtype == "float32":
        return w
    cast = lambda a: a if a is None or isinstance(a, Int4Weight) else round_to(a, dtype)
    embed = cast(w.embed)
    lm_head = embed if w.lm_head is w.embed else cast(w.lm_head)
    layers = [LayerWeights(**{k: cast(v) for k, v in vars(layer).items()}) for layer in w.layers]
    return ModelWeights(embed, cast(w.final_norm), lm_head, layers)

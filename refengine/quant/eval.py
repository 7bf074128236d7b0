"""Perplexity: how well a model predicts held-out text — the standard yardstick for a quantized model.

The text is tokenized once and cut into non-overlapping chunks of `seqlen` tokens (the AWQ / GPTQ
papers' protocol). Each chunk runs through the model's ordinary forward pass (LlamaModel.forward, on the
chosen backend, with a fresh KV cache), and every token after the first is scored:

    nll = Σ_chunks Σ_{t=1}^{S-1} −log softmax(logits[t−1])[ids[t]]        ppl = exp(nll / count)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.quant.calib import CalibrationDataError
from refengine.quant.primitives import array_module
from refengine.quant.progress import Progress


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float              # mean negative log-likelihood per scored token (nats)
    tokens: int             # scored tokens
    chunks: int
    seqlen: int


def chunk_nll(logits, ids: np.ndarray) -> float:
    """Σ −log p(ids[t] | ids[:t]) for t ≥ 1, from logits [S, V] (row t predicts token t+1)."""
    xp = array_module(logits)
    logits = logits[:-1].astype(xp.float64)
    target = xp.asarray(ids[1:])
    top = logits.max(axis=-1, keepdims=True)
    log_z = xp.log(xp.exp(logits - top).sum(axis=-1)) + top[:, 0]
    return float((log_z - logits[xp.arange(len(target)), target]).sum())


def eval_model(loaded, backend: str = "auto") -> LlamaModel:
    """The model to score. On the NumPy reference backend, attention over a chunk (one sequence, all
    tokens new) runs as quant/block.py's batched causal attention — the same math as the reference
    paged_attention (tested), ~5× faster, which makes a perplexity run minutes instead of a quarter hour."""
    from refengine.ops import get_backend, reference
    from refengine.quant.block import CalibrationOps
    ops = get_backend(backend)
    if ops is not reference:
        return LlamaModel(loaded.config, loaded.weights, ops)
    # int4 dequantized once, as LlamaModel does itself on this backend
    return LlamaModel(loaded.config, loaded.weights.dequantized(), CalibrationOps(ops))


def perplexity(model: LlamaModel, ids, seqlen: int, max_chunks: int | None = None,
               progress: Progress = Progress()) -> PerplexityResult:
    ids = np.asarray(ids, dtype=np.int64)
    chunks = len(ids) // seqlen
    if max_chunks is not None:
        chunks = min(chunks, max_chunks)
    if chunks == 0:
        raise CalibrationDataError(f"the text has {len(ids)} tokens, fewer than one chunk of --seqlen {seqlen}")
    kv = KVCache.allocate(model.cfg, num_blocks=1, block_size=seqlen, dtype=model.dtype,
                          xp=getattr(model.ops, "xp", np))
    progress.stage("perplexity", chunks)
    total = 0.0
    for c in range(chunks):
        chunk = ids[c * seqlen:(c + 1) * seqlen]
        logits = model.forward(ForwardBatch.single(chunk, 0, [0], seqlen, all_logits=True), kv)   # [S, V]
        total += chunk_nll(logits, chunk)
        progress.step(c + 1, f"ppl {math.exp(total / ((c + 1) * (seqlen - 1))):.3f}")
    count = chunks * (seqlen - 1)
    return PerplexityResult(math.exp(total / count), total / count, count, chunks, seqlen)

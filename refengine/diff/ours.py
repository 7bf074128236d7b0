"""refengine's side of a diff: the same quantities a dump holds, computed by LlamaModel directly (not
through the engine, so that nothing but the model code sits between the weights and the numbers)."""

from __future__ import annotations

import numpy as np

from refengine.diff.dump_format import PromptDump
from refengine.diff.metrics import log_softmax
from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch, LlamaModel

BLOCK = 64


def run_prompt(model: LlamaModel, ids: list[int], max_new_tokens: int) -> PromptDump:
    """Prefill `ids` with every position's logits and every layer's hidden state, then `max_new_tokens`
    greedy decode steps through the KV cache (eos is not special: the argmax continuation)."""
    total = len(ids) + max_new_tokens
    kv = KVCache.allocate(model.cfg, -(-total // BLOCK), BLOCK, dtype=model.dtype, xp=model.ops.xp)
    table = np.arange(kv.num_blocks)
    hidden: list = []
    logits = to_numpy(model.forward(ForwardBatch.single(ids, 0, table, BLOCK, all_logits=True), kv, hidden))
    # hidden = [embedding, layer 0 .. layer L-1, final norm]: the dump format stops before the final
    # norm (its effect is seen in the logits).
    stack = np.stack([to_numpy(h) for h in hidden[:-1]]).astype(np.float32)      # [L+1, T, hidden]
    greedy, logprobs, last = [], [], logits[-1]
    for step in range(max_new_tokens):
        logprobs.append(log_softmax(last))
        greedy.append(int(np.argmax(last)))
        if step + 1 < max_new_tokens:
            batch = ForwardBatch.single([greedy[-1]], len(ids) + step, table, BLOCK)
            last = to_numpy(model.forward(batch, kv))[0]
    V = logits.shape[-1]
    return PromptDump(np.asarray(ids, dtype=np.int64), stack, logits.astype(np.float32),
                      np.asarray(greedy, dtype=np.int64),
                      np.asarray(logprobs, dtype=np.float32).reshape(len(greedy), V))


def to_numpy(a) -> np.ndarray:
    """A NumPy array from a NumPy or CuPy one (a GPU backend returns device arrays)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)

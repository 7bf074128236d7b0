"""refengine/engine/graphs.py: a replayed decode graph gives the eager forward pass's logits (bit for bit
where both run the same kernels, i.e. up to 8 rows), padded buckets included, over several steps."""

from __future__ import annotations

import numpy as np
import pytest

from refengine.config import ModelConfig
from refengine.engine.graphs import DecodeGraphs
from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch, LlamaModel
from tests.kernels.helpers import require_gpu
from tests.kernels.model_cases import random_weights
from tests.tolerances import assert_close

cp = require_gpu()
from refengine.ops import cuda  # noqa: E402

BS = 16


def decode_batch(tables, positions, tokens) -> ForwardBatch:
    B = len(positions)
    pos = np.asarray(positions, dtype=np.int64)
    slots = tables[np.arange(B), pos // BS].astype(np.int64) * BS + pos % BS
    return ForwardBatch(np.asarray(tokens, np.int64), pos, np.arange(B + 1), pos + 1, tables, slots, np.arange(B))


@pytest.mark.parametrize("B,group_size", [(1, None), (3, None), (8, 128), (13, None), (5, 64)])
def test_graph_replay_matches_eager(B, group_size):
    cfg = ModelConfig(family="llama", hidden_size=256, num_layers=3, num_heads=8, num_kv_heads=2, head_dim=64,
                      intermediate_size=512, vocab_size=1000, max_position_embeddings=512)
    model = LlamaModel(cfg, random_weights(cfg, 0, group_size), cuda)
    NB = 8 * B + 8
    kv_eager = KVCache.allocate(cfg, NB, BS, dtype=np.float16, xp=cp)
    kv_graph = KVCache.allocate(cfg, NB, BS, dtype=np.float16, xp=cp)
    rng = np.random.default_rng(B)
    tables = rng.permutation(NB)[:B * 8].reshape(B, 8).astype(np.int32)
    lengths = rng.integers(1, 60, B)
    for b in range(B):                                   # prefill each sequence into both caches
        prompt = list(rng.integers(0, cfg.vocab_size, lengths[b]))
        for kv in (kv_eager, kv_graph):
            model.forward(ForwardBatch.single(prompt, 0, tables[b], BS), kv)
    graphs = DecodeGraphs(model, kv_graph, max_blocks_per_seq=8)
    tokens = rng.integers(0, cfg.vocab_size, B)
    positions = lengths.copy()
    for step in range(4):
        batch = decode_batch(tables, positions, tokens)
        eager = model.forward(batch, kv_eager).get()
        replay = graphs.run(batch).get()
        if B <= cuda.SMALL_M:
            np.testing.assert_array_equal(replay, eager, err_msg=f"step {step}")
        else:                                             # eager used cuBLAS for the matmuls, the graph cannot
            assert_close(replay, eager, "logits", "float16", f"step {step}")
        tokens = eager.argmax(-1)
        positions += 1
    assert list(graphs.graphs) == [next(b for b in graphs.buckets if b >= B)]

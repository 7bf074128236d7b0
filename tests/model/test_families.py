"""Whole-model logits of every supported family vs transformers float32, on tiny random checkpoints.

Each checkpoint is saved by tests/hf_models.py and loaded the way users load one
(refengine.model.hf.load_hf_config / load_hf_weights); the model runs on the NumPy backend over a paged
KV cache whose block tables are random, non-contiguous, with a block size (5) that divides no prompt.
transformers runs each sequence through its own KV cache in the same chunks (for dynamic-NTK rope the
chunking changes the numbers, in both).
"""

from __future__ import annotations

import numpy as np
import pytest

from refengine.engine.kv_cache import KVCache
from refengine.model.hf import load_hf_config, load_hf_weights
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.ops import get_backend
from tests.hf_models import FAMILIES, make_tiny_model, torch_logits
from tests.tolerances import assert_close, tolerance

BLOCK_SIZE = 5
NUM_BLOCKS = 64
PROMPT_LENGTHS = (1, 6, 17, 37)          # 37 > the dynamic-rope family's max_position_embeddings (24)
UNUSED_BLOCK = np.iinfo(np.int32).max    # padding of block tables: an IndexError if ever read


def load_ours(path) -> LlamaModel:
    cfg, family = load_hf_config(path)
    return LlamaModel(cfg, load_hf_weights(path, cfg, family), get_backend("numpy"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """family -> (our model, transformers reference), built once per module."""
    made = {}

    def get(family):
        if family not in made:
            path, ref = make_tiny_model(family, tmp_path_factory.mktemp("tiny"))
            made[family] = (load_ours(path), ref)
        return made[family]
    return get


def prompt(length: int, vocab: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, vocab, length).tolist()


def random_tables(num_seqs: int, blocks_each: int, seed: int) -> list[np.ndarray]:
    """Disjoint, shuffled (non-contiguous) block tables drawn from the whole cache."""
    perm = np.random.default_rng(seed).permutation(NUM_BLOCKS)
    return [perm[i * blocks_each:(i + 1) * blocks_each].astype(np.int32) for i in range(num_seqs)]


def pack(parts) -> ForwardBatch:
    """One ForwardBatch from [(new_ids, start_pos, block_table), ...]; logits for every row."""
    positions = [np.arange(start, start + len(ids)) for ids, start, _ in parts]
    width = max(len(table) for _, _, table in parts)
    tables = np.full((len(parts), width), UNUSED_BLOCK, dtype=np.int32)
    for b, (_, _, table) in enumerate(parts):
        tables[b, :len(table)] = table
    slots = [table[p // BLOCK_SIZE].astype(np.int64) * BLOCK_SIZE + p % BLOCK_SIZE
             for p, (_, _, table) in zip(positions, parts)]
    total = sum(len(ids) for ids, _, _ in parts)
    return ForwardBatch(
        input_ids=np.concatenate([np.asarray(ids, dtype=np.int64) for ids, _, _ in parts]),
        positions=np.concatenate(positions).astype(np.int64),
        cu_seqlens_q=np.cumsum([0] + [len(ids) for ids, _, _ in parts]),
        context_lens=np.array([start + len(ids) for ids, start, _ in parts]),
        block_tables=tables, slot_mapping=np.concatenate(slots), logits_rows=np.arange(total))


def our_logits(model: LlamaModel, ids: list[int], chunks: list[int], seed: int) -> np.ndarray:
    """Our logits [len(ids), V] for one sequence fed in `chunks` through one paged KV cache."""
    kv = KVCache.allocate(model.cfg, NUM_BLOCKS, BLOCK_SIZE)
    (table,) = random_tables(1, -(-len(ids) // BLOCK_SIZE), seed)
    out, start = [], 0
    for n in chunks:
        out.append(model.forward(pack([(ids[start:start + n], start, table)]), kv))
        start += n
    return np.concatenate(out)


MODES = {
    "prefill": lambda n: [n],
    "chunked": lambda n: [max(1, n * 2 // 5), n - max(1, n * 2 // 5)] if n > 1 else [1],
    "decode": lambda n: [1] * n,
}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(tiny, family, mode):
    ours, ref = tiny(family)
    for seed, length in enumerate(PROMPT_LENGTHS):
        ids = prompt(length, ours.cfg.vocab_size, seed)
        chunks = MODES[mode](length)
        assert_close(our_logits(ours, ids, chunks, seed), torch_logits(ref, ids, chunks), "logits", "float32",
                     msg=f"{family} {mode} length {length}")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_batch_equals_each_alone(tiny, family):
    """One forward pass over four sequences in different states equals each sequence run by itself:
    a fresh prefill longer than the dynamic family's trained length, a chunk continuing cached context,
    a decode step, and a one-token prompt."""
    ours, ref = tiny(family)
    vocab = ours.cfg.vocab_size
    # (earlier tokens already cached, new tokens this step)
    shapes = [(0, 30), (7, 6), (9, 1), (0, 1)]
    seqs = [prompt(a + b, vocab, 100 + i) for i, (a, b) in enumerate(shapes)]
    tables = random_tables(len(seqs), 8, seed=7)
    kv = KVCache.allocate(ours.cfg, NUM_BLOCKS, BLOCK_SIZE)
    earlier = [(s[:a], 0, t) for s, (a, _), t in zip(seqs, shapes, tables) if a]
    ours.forward(pack(earlier), kv)                                       # step 1: the cached context
    step = pack([(s[a:], a, t) for s, (a, _), t in zip(seqs, shapes, tables)])
    batched = ours.forward(step, kv)                                      # step 2: the mixed batch
    for b, (seq, (a, n)) in enumerate(zip(seqs, shapes)):
        rows = batched[step.cu_seqlens_q[b]:step.cu_seqlens_q[b + 1]]
        chunks = [a, n] if a else [n]
        alone = our_logits(ours, seq, chunks, seed=b)[a:]
        assert_close(rows, alone, "logits_self", "float32", msg=f"{family} sequence {b} batched vs alone")
        assert_close(rows, torch_logits(ref, seq, chunks)[a:], "logits", "float32",
                     msg=f"{family} sequence {b} batched vs transformers")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "internlm2", "llama-tied"])
def test_half_precision_checkpoint(tmp_path, family, dtype):
    """A float16 / bfloat16 checkpoint loads (bfloat16 without torch) and matches transformers run in
    float32 on the same rounded weights."""
    path, ref = make_tiny_model(family, tmp_path, dtype=dtype, seed=3)
    ours = load_ours(path)
    ids = prompt(19, ours.cfg.vocab_size, seed=11)
    assert_close(our_logits(ours, ids, [19], seed=1), torch_logits(ref, ids), "logits", "float32",
                 msg=f"{family} {dtype} checkpoint")


def test_sharded_checkpoint(tmp_path):
    path, ref = make_tiny_model("llama", tmp_path, max_shard_size="100KB", seed=5)
    shards = sorted(p.name for p in path.glob("*.safetensors"))
    assert (path / "model.safetensors.index.json").is_file() and len(shards) > 2, shards
    ours = load_ours(path)
    ids = prompt(13, ours.cfg.vocab_size, seed=12)
    assert_close(our_logits(ours, ids, [6, 7], seed=2), torch_logits(ref, ids, [6, 7]), "logits", "float32",
                 msg="sharded checkpoint")


def test_tiny_models_are_sensitive(tiny):
    """Guard on the test itself: the last token one position off (a rope / position bug) must miss the
    tolerance by far, or the comparisons above would not notice such a bug."""
    ours, ref = tiny("llama")
    ids = prompt(17, ours.cfg.vocab_size, seed=0)
    kv = KVCache.allocate(ours.cfg, NUM_BLOCKS, BLOCK_SIZE)
    (table,) = random_tables(1, 5, seed=0)
    batch = pack([(ids, 0, table)])
    batch.positions[-1] += 1
    off_by_one = ours.forward(batch, kv)[-1]
    atol, _ = tolerance("logits", "float32")
    assert np.abs(off_by_one - torch_logits(ref, ids)[-1]).max() > 100 * atol

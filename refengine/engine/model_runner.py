"""The model runner: owns the paged KV cache and turns a SchedulerOutput into one forward pass.

Packing (B scheduled sequences, T new tokens in all; see ForwardBatch in model/llama.py):

    input_ids      | seq 0: tokens [c0, c0+n0) | seq 1: [c1, c1+n1) | ... |      c = num_computed
    cu_seqlens_q   0                           n0                  n0+n1 ... T
    context_lens   [c0+n0, c1+n1, ...]         (tokens in the cache after this step)
    slot_mapping   block_table[p // BS] · BS + p % BS  for each new position p
    logits_rows    the last row of each sequence that catches up (it samples); none for a middle chunk
"""

from __future__ import annotations

import numpy as np

from refengine.engine.graphs import DecodeGraphs
from refengine.engine.kv_cache import KVCache
from refengine.engine.scheduler import ScheduledSequence, SchedulerOutput
from refengine.model.llama import ForwardBatch, LlamaModel

PAD_BLOCK = 0   # fills block_tables rows past a sequence's blocks; never read (context_lens bounds reads)


def copy_blocks(kv: KVCache, copies: list[tuple[int, int]]) -> None:
    """Copy whole KV blocks src -> dst in every layer (copy-on-write of a shared block), in order."""
    for src, dst in copies:
        for k_cache, v_cache in zip(kv.k_caches, kv.v_caches):
            k_cache[dst] = k_cache[src]
            v_cache[dst] = v_cache[src]


def pack_batch(scheduled: list[ScheduledSequence], block_size: int) -> ForwardBatch:
    counts = np.array([s.num_new_tokens for s in scheduled], dtype=np.int64)               # [B]
    starts = np.array([s.seq.num_computed for s in scheduled], dtype=np.int64)              # [B]
    cu = np.concatenate([[0], np.cumsum(counts)])                                            # [B+1]
    row_seq = np.repeat(np.arange(len(scheduled)), counts)                                   # [T]
    positions = starts[row_seq] + np.arange(cu[-1]) - cu[:-1][row_seq]                       # [T]
    ids = np.fromiter((t for s in scheduled for t in s.seq.token_ids[s.seq.num_computed:
                                                                      s.seq.num_computed + s.num_new_tokens]),
                      dtype=np.int64, count=int(cu[-1]))
    tables = np.full((len(scheduled), max(len(s.seq.block_table) for s in scheduled)), PAD_BLOCK, np.int32)
    for b, s in enumerate(scheduled):
        tables[b, :len(s.seq.block_table)] = s.seq.block_table
    slots = tables[row_seq, positions // block_size].astype(np.int64) * block_size + positions % block_size
    rows = np.array([cu[b + 1] - 1 for b, s in enumerate(scheduled) if s.samples], dtype=np.int64)
    return ForwardBatch(ids, positions, cu, starts + counts, tables, slots, rows)


class ModelRunner:
    def __init__(self, model: LlamaModel, num_blocks: int, block_size: int):
        self.model = model
        self.block_size = block_size
        # A tensor-parallel model (refengine/parallel) keeps one KV cache per rank, copies blocks in all of them
        # and runs eagerly (its step also reaches other processes): it brings allocate_kv / copy_kv_blocks.
        self.sharded = hasattr(model, "allocate_kv")
        if self.sharded:
            self.kv = model.allocate_kv(num_blocks, block_size)
            self.graphs = None
            return
        self.kv = KVCache.allocate(model.cfg, num_blocks, block_size, dtype=model.dtype, xp=model.ops.xp)
        # CUDA backend: decode steps replay captured graphs (refengine/engine/graphs.py); None on NumPy
        max_blocks = min(num_blocks, -(-model.cfg.max_position_embeddings // block_size))
        self.graphs = DecodeGraphs.for_model(model, self.kv, max_blocks)

    def can_run_ahead(self, batch_size: int) -> bool:
        """Whether a decode step of batch_size sequences can take its input ids from the device (run_ahead):
        a captured graph holds it, or the NumPy backend (where it is plain indexing, for tests)."""
        if self.sharded:
            return False
        if self.graphs is None:
            return self.model.ops.xp is np
        return batch_size <= self.graphs.buckets[-1]

    def run(self, out: SchedulerOutput) -> np.ndarray:
        """Logits [R, V] float32, one row per scheduled sequence that samples, in scheduled order
        (a CuPy array on the CUDA backend)."""
        batch = self._prepare(out)
        if self.graphs is not None and self.graphs.fits(batch):
            return self.graphs.run(batch)
        return self.model.forward(batch, self.kv)

    def run_ahead(self, out: SchedulerOutput, sampled_ids, sources: list[int]):
        """run() for a decode step whose input ids are not on the host yet: sequence i of `out` takes
        sampled_ids[sources[i]] (the previous step's sampler output, still on the device). The GPU queues
        the step behind the sampler; nothing here waits for either."""
        batch = self._prepare(out)
        if self.graphs is None:
            batch.input_ids = np.asarray(sampled_ids)[sources]
            return self.model.forward(batch, self.kv)
        if not self.graphs.fits(batch):
            raise RuntimeError(f"run_ahead: a batch of {len(sources)} does not fit the decode graphs")
        return self.graphs.run(batch, (sampled_ids, sources))

    def _prepare(self, out: SchedulerOutput) -> ForwardBatch:
        """Block copies first (copy-on-write), then the packed batch."""
        if self.sharded:
            self.model.copy_kv_blocks(self.kv, out.copies)
        elif self.model.ops.xp is np:
            copy_blocks(self.kv, out.copies)
        elif out.copies:
            src, dst = zip(*out.copies)
            self.model.ops.copy_blocks(self.kv.k_caches, self.kv.v_caches, src, dst)
        return pack_batch(out.scheduled, self.block_size)

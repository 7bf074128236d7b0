"""Tensor parallelism simulated in one process: every rank's shard runs the ordinary forward pass, the
collectives are plain NumPy sums and concatenations. It proves the splitting (plan.py, shard.py) and the
places where the model combines ranks (LlamaModel's `comm` hooks) on a CPU, against the tp = 1 logits.

    rank 0 thread:  embed → attn(heads 0..) ─┐ all_reduce ┌→ mlp(chans 0..) ─┐ all_reduce ┌→ … → logits[:, V0]─┐
    rank 1 thread:  embed → attn(heads ..) ──┴── (sum) ───┴→ mlp(chans ..) ──┴── (sum) ───┴→ … → logits[:, V1]─┴→ gather

Each rank runs in its own thread up to its next collective; the collective is a barrier where every rank
leaves its part and then reads all of them. The sum is taken in rank order by every rank, so all ranks get
bit-identical results, as NCCL's all-reduce guarantees. Each rank has its own KV cache (its KV heads), as
each GPU would.

SimulatedTPModel is an Engine model (it brings allocate_kv / copy_kv_blocks, which ModelRunner uses), so a
whole generation with continuous batching, prefix sharing and copy-on-write can be compared with tp = 1.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from refengine.config import ModelConfig
from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.model.weights import ModelWeights
from refengine.ops import reference
from refengine.parallel.plan import TPPlan, make_plan
from refengine.parallel.shard import group_size_of, shard_weights

TIMEOUT_S = 600.0      # a rank stuck this long at a collective means another rank died: fail, do not hang


class ThreadGroup:
    """The meeting point of tp rank threads: exchange() returns every rank's contribution, in rank order."""

    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=TIMEOUT_S)
        self.slots: list = [None] * size

    def exchange(self, rank: int, part) -> list:
        self.slots[rank] = part
        self.barrier.wait()             # every rank has left its part
        parts = list(self.slots)
        self.barrier.wait()             # every rank has read them all: the slots may be reused
        return parts

    def abort(self) -> None:
        """Release every rank waiting at a collective (they raise BrokenBarrierError): one rank failed."""
        self.barrier.abort()


@dataclass
class ThreadComm:
    """One rank's end of a ThreadGroup: the `comm` a rank's LlamaModel calls."""
    group: ThreadGroup
    rank: int
    vocab_size: int

    def all_reduce(self, x):
        parts = self.group.exchange(self.rank, x)
        total = parts[0].copy()
        for p in parts[1:]:
            total += p
        return total

    def gather_vocab(self, logits):
        """[R, V/tp] per rank -> [R, V]: the vocabulary blocks side by side, the padding cut off."""
        parts = self.group.exchange(self.rank, logits)
        return np.concatenate(parts, axis=1)[:, :self.vocab_size]


@dataclass
class ShardedKV:
    """One KV cache per rank, each [num_blocks, block_size, kv_heads_per_rank, D] per layer."""
    ranks: list[KVCache]


def rank_models(cfg: ModelConfig, weights: ModelWeights, plan: TPPlan, ops, dtype=None) -> list[LlamaModel]:
    """Every rank's LlamaModel over its shard, wired to one ThreadGroup."""
    group = ThreadGroup(plan.tp)
    local = plan.local_config()
    return [LlamaModel(local, shard_weights(weights, plan, r), ops, dtype, comm=ThreadComm(group, r, cfg.vocab_size))
            for r in range(plan.tp)]


class SimulatedTPModel:
    """tp ranks of `weights` in this process (NumPy by default); logits equal the tp = 1 model's."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, tp: int, ops=reference, dtype=None):
        self.cfg = cfg
        self.ops = ops
        self.plan = make_plan(cfg, tp, group_size_of(weights))
        self.ranks = rank_models(cfg, weights, self.plan, ops, dtype)
        self.dtype = self.ranks[0].dtype
        self.group = self.ranks[0].comm.group

    def kv_bytes_per_block(self, block_size: int) -> int:
        """KV bytes of one block in all ranks' caches together (they share this process's memory)."""
        return sum(KVCache.bytes_per_block(m.cfg, block_size, self.dtype.itemsize) for m in self.ranks)

    def allocate_kv(self, num_blocks: int, block_size: int) -> ShardedKV:
        return ShardedKV([KVCache.allocate(m.cfg, num_blocks, block_size, dtype=self.dtype, xp=self.ops.xp)
                          for m in self.ranks])

    def copy_kv_blocks(self, kv: ShardedKV, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        src, dst = zip(*copies)
        for cache in kv.ranks:
            self.ops.copy_blocks(cache.k_caches, cache.v_caches, src, dst)

    def forward(self, batch: ForwardBatch, kv: ShardedKV, hidden_states: list | None = None):
        """Logits [R, V] float32 (rank 0's copy; every rank holds the same). hidden_states: rank 0's."""
        results: list = [None] * self.plan.tp
        errors: list = []

        def run(r: int) -> None:
            try:
                results[r] = self.ranks[r].forward(batch, kv.ranks[r], hidden_states if r == 0 else None)
            except threading.BrokenBarrierError as e:     # another rank failed first: its error is the one
                errors.append((1, r, e))
            except Exception as e:                        # noqa: BLE001 — re-raised below, in the caller
                errors.append((0, r, e))
                self.group.abort()
        threads = [threading.Thread(target=run, args=(r,), name=f"tp-rank-{r}") for r in range(1, self.plan.tp)]
        for t in threads:
            t.start()
        run(0)
        for t in threads:
            t.join()
        if errors:
            self.group.barrier.reset()
            raise min(errors, key=lambda e: e[:2])[2]
        return results[0]

"""The block manager: which KV-cache blocks each sequence owns.

The KV cache is NB blocks of BS token slots (per layer: [NB, BS, KVH, D]). A sequence's block table
lists its blocks in token order; token p lives in block block_table[p // BS] at offset p % BS, and its
flat slot (what write_kv_cache takes) is block · BS + offset:

    sequence A: 10 tokens, BS = 4          block_table = [3, 0, 4]
        tokens  0 1 2 3 │ 4 5 6 7 │ 8 9
                  ▼         ▼        ▼
    blocks   ┌─────────┬─────────┬─────────┬─────────┬─────────┐
             │ 0: A4-7 │ 1: free │ 2: B0-3 │ 3: A0-3 │ 4: A8,9 │   token 9 → block 4, offset 1
             └─────────┴─────────┴─────────┴─────────┴─────────┘             → slot 4·4 + 1 = 17

Blocks are reference counted: `n > 1` completions of one prompt, and prompts with a common prefix
(prefix caching), share blocks. A shared block is never written: before a sequence writes into a
shared, partly filled block it gets a private copy (copy-on-write; the copy is queued in
`pending_copies` for the model runner to perform before the step's forward pass).

Predicate / action pairs (the scheduler asks first, then acts; an action never fails):
    can_allocate / allocate     a waiting sequence gets blocks for all its tokens (prefix hits first)
    can_append / append_slot    a running sequence gets room for its next token (a new block or a copy)
    free                        give back every block of a sequence; its K/V is gone (num_computed = 0)

Prefix caching (opt-in). Once a block is full and computed it is *sealed*: it gets the chain hash
    h_i = hash(h_{i-1}, tokens of block i)        (h_{-1} = ROOT_HASH)
and `_cached[h_i]` points to it. A new sequence walks its own chain and reuses each block found there
whose tokens and parent (the block before it, by content id) are its own: a hash collision can
only cost a miss, never a false hit. A freed sealed block keeps its contents in an LRU free list and
is revived by a hit; it is evicted (unsealed) only when a free block is needed and no empty one is left.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from typing import Callable

import numpy as np

from refengine.engine.sequence import Sequence

ROOT_HASH = 0           # the chain hash before a sequence's first block
EMPTY_PREFIX = 0        # content id of the empty prefix: the parent of every first block
UNSEALED = None         # content id / hash of a block whose contents are not in the prefix cache

BlockHash = Callable[[int, tuple], int]


def chain_hash(parent_hash: int, token_ids: tuple) -> int:
    return hash((parent_hash, token_ids))


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids", "parent", "content_id")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.reset()

    def reset(self) -> None:
        self.hash = UNSEALED
        self.token_ids: tuple = ()
        self.parent = EMPTY_PREFIX        # content id of the block before this one
        self.content_id = UNSEALED        # unique per sealing, never reused

    def holds(self, parent: int, token_ids: tuple) -> bool:
        return self.content_id is not UNSEALED and self.parent == parent and self.token_ids == token_ids


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False,
                 hash_fn: BlockHash = chain_hash):
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.hash_fn = hash_fn
        self.blocks = [Block(i) for i in range(num_blocks)]
        self._free_empty = list(range(num_blocks - 1, -1, -1))   # a stack: recently used memory first
        self._free_cached: OrderedDict[int, None] = OrderedDict()  # sealed, unreferenced; LRU first
        self._cached: dict[int, int] = {}                          # chain hash -> block id
        self._content_ids = itertools.count(EMPTY_PREFIX + 1)
        self.pending_copies: list[tuple[int, int]] = []           # (src, dst) copy-on-write
        self.num_hit_blocks = 0                                    # statistics: prefix-cache hits

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_empty) + len(self._free_cached)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---------------------------------------------------------------- predicates and actions

    def can_allocate(self, seq: Sequence) -> bool:
        hits = self._match_prefix(seq) if self._may_match(seq) else []
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)   # taken off the free list
        return self.blocks_needed(seq) - len(hits) + revived <= self.num_free_blocks

    def allocate(self, seq: Sequence) -> None:
        """Blocks for all of seq's tokens. A sequence without blocks first reuses cached prefix blocks;
        their tokens count as computed (at least one token is left to compute, for its logits)."""
        if self._may_match(seq):
            for block_id in self._match_prefix(seq):
                self._use(block_id)
                seq.block_table.append(block_id)
            self.num_hit_blocks += len(seq.block_table)
            seq.num_computed = len(seq.block_table) * self.block_size
            seq.num_sealed = len(seq.block_table)
        self._copy_on_write(seq)
        self._grow(seq)

    def can_append(self, seq: Sequence) -> bool:
        return self.blocks_needed(seq) <= self.num_free_blocks

    def blocks_needed(self, seq: Sequence) -> int:
        """Free blocks seq needs to hold all its tokens: new ones, plus a private copy of a shared block
        it is about to write."""
        return self.blocks_for(seq.num_tokens) - len(seq.block_table) + self._needs_copy(seq)

    def append_slot(self, seq: Sequence) -> None:
        """Room for the tokens seq has not computed yet (a decode step: one token, at most one block)."""
        self._copy_on_write(seq)
        self._grow(seq)

    def free(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):   # the tail first: it is evicted before the prefix
            self._release(block_id)
        seq.block_table = []
        seq.num_computed = 0
        seq.num_sealed = 0

    def fork(self, child: Sequence) -> None:
        """`child` was copied from a sequence (same block table): it now holds those blocks too."""
        for block_id in child.block_table:
            self.blocks[block_id].ref_count += 1

    def seal_computed_blocks(self, seq: Sequence) -> None:
        """After a step: enter seq's newly full and computed blocks into the prefix cache."""
        if not self.enable_prefix_caching:
            return
        while seq.num_sealed < seq.num_computed // self.block_size:
            self._seal(seq, seq.num_sealed)
            seq.num_sealed += 1

    # ---------------------------------------------------------------- helpers

    def _needs_copy(self, seq: Sequence) -> bool:
        i = seq.num_computed // self.block_size     # the block the next token goes to
        return i < len(seq.block_table) and self.blocks[seq.block_table[i]].ref_count > 1

    def _copy_on_write(self, seq: Sequence) -> None:
        if self._needs_copy(seq):
            i = seq.num_computed // self.block_size
            src, dst = seq.block_table[i], self._pop_free()
            self.blocks[src].ref_count -= 1
            seq.block_table[i] = dst
            self.pending_copies.append((src, dst))

    def _grow(self, seq: Sequence) -> None:
        for _ in range(self.blocks_for(seq.num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._pop_free())

    def _pop_free(self) -> int:
        if self._free_empty:
            block_id = self._free_empty.pop()
        else:
            block_id, _ = self._free_cached.popitem(last=False)    # evict the least recently freed
            self._unseal(self.blocks[block_id])
        self.blocks[block_id].ref_count = 1
        return block_id

    def _use(self, block_id: int) -> None:
        if self.blocks[block_id].ref_count == 0:
            del self._free_cached[block_id]
        self.blocks[block_id].ref_count += 1

    def _release(self, block_id: int) -> None:
        block = self.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count:
            return
        if block.hash is not UNSEALED and self._cached.get(block.hash) == block_id:
            self._free_cached[block_id] = None          # keep its contents until the space is needed
        else:
            block.reset()
            self._free_empty.append(block_id)

    def _unseal(self, block: Block) -> None:
        if self._cached.get(block.hash) == block.block_id:
            del self._cached[block.hash]
        block.reset()

    # ---------------------------------------------------------------- prefix caching

    def _may_match(self, seq: Sequence) -> bool:
        return self.enable_prefix_caching and not seq.block_table

    def _block_tokens(self, seq: Sequence, i: int) -> tuple:
        return tuple(seq.token_ids[i * self.block_size:(i + 1) * self.block_size])

    def _chain_hash(self, seq: Sequence, i: int) -> int:
        """h_i of seq's full block i (memoised on the sequence: its tokens only ever grow)."""
        while len(seq.block_hashes) <= i:
            j = len(seq.block_hashes)
            parent = seq.block_hashes[j - 1] if j else ROOT_HASH
            seq.block_hashes.append(self.hash_fn(parent, self._block_tokens(seq, j)))
        return seq.block_hashes[i]

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding seq's leading full blocks, in order (never all of its tokens)."""
        hits, parent = [], EMPTY_PREFIX
        for i in range((seq.num_tokens - 1) // self.block_size):
            block_id = self._cached.get(self._chain_hash(seq, i))
            if block_id is None or not self.blocks[block_id].holds(parent, self._block_tokens(seq, i)):
                break
            hits.append(block_id)
            parent = self.blocks[block_id].content_id
        return hits

    def _seal(self, seq: Sequence, i: int) -> None:
        block = self.blocks[seq.block_table[i]]
        if block.content_id is not UNSEALED:       # shared and already sealed by another sequence
            return
        block.hash = self._chain_hash(seq, i)
        block.token_ids = self._block_tokens(seq, i)
        block.parent = self.blocks[seq.block_table[i - 1]].content_id if i else EMPTY_PREFIX
        block.content_id = next(self._content_ids)
        self._cached.setdefault(block.hash, block.block_id)    # a duplicate stays private


# ---------------------------------------------------------------- KV budget

def available_memory_bytes(xp=np) -> int:
    """Memory the KV cache can take now, where it will live: for CuPy arrays the GPU's free memory (plus
    what CuPy's pool holds unused); for NumPy what the OS can give us — MemAvailable from /proc/meminfo,
    else free physical pages."""
    if xp is not np:
        free, _total = xp.cuda.runtime.memGetInfo()
        return int(free) + int(xp.get_default_memory_pool().free_bytes())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def num_kv_blocks(cache_max_entry_count: float, bytes_per_block: int, available: int | None = None,
                  xp=np) -> int:
    """cache_max_entry_count >= 1: that many blocks; in (0, 1): that fraction of the memory available
    now on the device of array module `xp` (call it after the weights are loaded, so they are not
    counted twice)."""
    if cache_max_entry_count >= 1:
        return int(cache_max_entry_count)
    free = available_memory_bytes(xp) if available is None else available
    return int(free * cache_max_entry_count) // bytes_per_block

"""BlockManager: allocation and ref counts, prefix caching (hits, misses, no false hits on a hash
collision, LRU reuse of freed cached blocks), copy-on-write of a shared block, and the KV budget."""

import pytest

from refengine.engine.block_manager import BlockManager, chain_hash, num_kv_blocks
from refengine.engine.sequence import Sequence

BS = 4


def seq(tokens, seq_id=0):
    return Sequence(seq_id, seq_id, list(tokens), arrival=seq_id)


def admit(bm, s):
    assert bm.can_allocate(s)
    bm.allocate(s)
    return s


def compute(bm, s):
    """What a step does: all tokens computed, full blocks sealed."""
    s.num_computed = s.num_tokens
    bm.seal_computed_blocks(s)


def test_allocate_append_free_and_slots():
    bm = BlockManager(6, BS)
    a = admit(bm, seq(range(10)))
    assert len(a.block_table) == 3 and bm.num_free_blocks == 3
    compute(bm, a)
    for t in (10, 11):                           # fill the third block: no new block
        a.append_token(t)
        assert bm.can_append(a)
        bm.append_slot(a)
        a.num_computed += 1
    assert len(a.block_table) == 3
    a.append_token(12)                           # token 12 starts block 4
    bm.append_slot(a)
    assert len(a.block_table) == 4 and bm.num_free_blocks == 2
    b = seq(range(9), 1)
    assert not bm.can_allocate(b)                # needs 3, 2 free
    bm.free(a)
    assert bm.num_free_blocks == 6 and a.block_table == [] and a.num_computed == 0
    assert all(blk.ref_count == 0 for blk in bm.blocks)


def test_prefix_hit_shares_blocks_and_counts_them_computed():
    bm = BlockManager(16, BS, enable_prefix_caching=True)
    a = admit(bm, seq([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]))
    compute(bm, a)
    b = admit(bm, seq([1, 2, 3, 4, 5, 6, 7, 8, 42], 1))
    assert b.block_table[:2] == a.block_table[:2]            # both full blocks reused
    assert b.block_table[2] != a.block_table[2]
    assert b.num_computed == 8                                # only token 8 is computed again
    assert bm.blocks[a.block_table[0]].ref_count == 2
    assert bm.num_hit_blocks == 2


def test_prefix_miss_when_first_block_differs_and_partial_match():
    bm = BlockManager(16, BS, enable_prefix_caching=True)
    a = admit(bm, seq([1, 2, 3, 4, 5, 6, 7, 8, 9]))
    compute(bm, a)
    c = admit(bm, seq([0, 2, 3, 4, 5, 6, 7, 8, 9], 1))       # first block differs: nothing matches
    assert c.num_computed == 0 and not set(c.block_table) & set(a.block_table)
    d = admit(bm, seq([1, 2, 3, 4, 5, 6, 7, 0, 9], 2))        # second block differs: one hit
    assert d.num_computed == 4 and d.block_table[0] == a.block_table[0]


def test_whole_prompt_cached_still_computes_the_last_token():
    bm = BlockManager(16, BS, enable_prefix_caching=True)
    a = admit(bm, seq(range(8)))
    compute(bm, a)
    b = admit(bm, seq(range(8), 1))
    assert b.num_computed == 4 and b.num_computed < b.num_tokens   # logits need a computed last token


def test_no_false_hit_on_hash_collision():
    # A hash that ignores the parent: block [5,6,7,8] hashes the same after any first block.
    bm = BlockManager(16, BS, enable_prefix_caching=True, hash_fn=lambda parent, tokens: hash(tokens))
    a = admit(bm, seq([1, 1, 1, 1, 5, 6, 7, 8, 0]))
    compute(bm, a)
    e = admit(bm, seq([2, 2, 2, 2, 0], 1))
    compute(bm, e)
    d = admit(bm, seq([2, 2, 2, 2, 5, 6, 7, 8, 0], 2))
    assert d.block_table[0] == e.block_table[0]               # a true hit
    assert d.block_table[1] != a.block_table[1]               # same hash, same tokens, other prefix: a miss
    assert d.num_computed == 4
    # and a constant hash: every lookup collides, nothing false is ever returned
    bm = BlockManager(16, BS, enable_prefix_caching=True, hash_fn=lambda parent, tokens: 0)
    a = admit(bm, seq([1, 2, 3, 4, 5]))
    compute(bm, a)
    f = admit(bm, seq([9, 9, 9, 9, 5], 1))
    assert f.num_computed == 0 and f.block_table[0] != a.block_table[0]


def test_freed_cached_blocks_are_revived_then_evicted_lru():
    bm = BlockManager(4, BS, enable_prefix_caching=True)
    a = admit(bm, seq(range(9)))                              # blocks for 0-3, 4-7, 8
    compute(bm, a)
    cached = a.block_table[:2]
    bm.free(a)
    assert bm.num_free_blocks == 4
    b = admit(bm, seq(list(range(8)) + [99], 1))              # revives both cached blocks
    assert b.block_table[:2] == cached and b.num_computed == 8
    bm.free(b)
    c = admit(bm, seq([7] * 16, 2))                            # needs all 4: evicts the cached ones
    assert sorted(c.block_table) == [0, 1, 2, 3]
    bm.free(c)
    d = admit(bm, seq(list(range(8)) + [99], 3))
    assert d.num_computed == 0                                 # gone from the cache


def test_fork_shares_blocks_and_copies_on_write():
    bm = BlockManager(8, BS)
    a = admit(bm, seq(range(6)))                               # block 0 full, block 1 half full
    compute(bm, a)
    b = a.fork(1)
    bm.fork(b)
    assert all(bm.blocks[i].ref_count == 2 for i in a.block_table)
    b.append_token(100)                                        # b writes position 6: into shared block 1
    assert bm.can_append(b)
    bm.append_slot(b)
    src, dst = bm.pending_copies[-1]
    assert src == a.block_table[1] and b.block_table == [a.block_table[0], dst]
    assert bm.blocks[src].ref_count == 1 and bm.blocks[dst].ref_count == 1
    a.append_token(200)                                        # a now owns block 1 alone: no copy
    bm.append_slot(a)
    assert len(bm.pending_copies) == 1
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 8


def test_chain_hash_depends_on_parent():
    assert chain_hash(1, (1, 2)) != chain_hash(2, (1, 2))


def test_kv_budget_fraction_and_block_count():
    assert num_kv_blocks(7, bytes_per_block=1000) == 7
    assert num_kv_blocks(0.5, bytes_per_block=1000, available=10_000) == 5
    assert num_kv_blocks(0.5, bytes_per_block=1 << 20) > 0     # of this machine's MemAvailable


@pytest.mark.parametrize("caching", [False, True])
def test_many_sequences_share_then_release_everything(caching):
    bm = BlockManager(64, BS, enable_prefix_caching=caching)
    seqs = [admit(bm, seq([1, 2, 3, 4, 5, 6, 7, 8] + [i] * (i + 1), i)) for i in range(6)]
    for s in seqs:
        compute(bm, s)
    for s in seqs:
        bm.free(s)
    assert bm.num_free_blocks == 64 and all(b.ref_count == 0 for b in bm.blocks)

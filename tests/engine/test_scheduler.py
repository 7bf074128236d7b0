"""Continuous batching on a tiny random model: batched greedy results equal each prompt run alone through
an independent full-prefill loop; chunked prefill, preemption + recompute, batch limits and fairness."""

import numpy as np
import pytest

from refengine.config import EngineConfig
from refengine.engine.core import EngineCore
from refengine.sampling_params import GenerationConfig
from tiny_engine import VOCAB, engine_config, reference_greedy, tiny_model

GREEDY = GenerationConfig(temperature=0, max_new_tokens=10, ignore_eos=True)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=1)


def prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(2, VOCAB, size=n).tolist() for n in lengths]


def run_all(core, items, cfg=GREEDY, on_step=None):
    """Add (session_id, prompt) pairs, step until idle; token ids per session."""
    for sid, p in items:
        core.add_request(sid, p, cfg)
    got = {sid: [] for sid, _ in items}
    while core.has_work():
        for out in core.step():
            got[out.session_id] += out.token_ids
        if on_step:
            on_step(core)
    return got


@pytest.fixture(scope="module")
def mixed(model):
    ps = prompts([1, 3, 7, 12, 20, 33])
    return ps, [reference_greedy(model, p, GREEDY.max_new_tokens) for p in ps]


def test_batch_of_mixed_lengths_equals_each_alone(model, mixed):
    ps, refs = mixed
    core = EngineCore.build(model, engine_config(num_blocks=64, block_size=4))
    got = run_all(core, list(enumerate(ps)))
    assert [got[i] for i in range(len(ps))] == refs
    assert core.block_manager.num_free_blocks == 64


def test_chunked_prefill_respects_the_token_budget(model, mixed):
    ps, refs = mixed
    core = EngineCore.build(model, engine_config(num_blocks=64, block_size=4, max_prefill_token_num=5))
    sizes = []
    orig = core.scheduler.schedule
    core.scheduler.schedule = lambda: (lambda out: sizes.append(out.num_tokens) or out)(orig())
    got = run_all(core, list(enumerate(ps)))
    assert [got[i] for i in range(len(ps))] == refs
    assert max(sizes) <= 5


def test_preemption_recomputes_and_gives_the_same_tokens(model, mixed):
    ps, refs = mixed
    # 20 blocks of 4 tokens: the six requests need 4..11 blocks each at the end, 47 in all
    core = EngineCore.build(model, engine_config(num_blocks=20, block_size=4))
    got = run_all(core, list(enumerate(ps)))
    assert core.stats["preempted"] > 0
    assert [got[i] for i in range(len(ps))] == refs
    assert core.block_manager.num_free_blocks == 20


def test_preempts_the_newest_and_requeues_it_first(model):
    core = EngineCore.build(model, engine_config(num_blocks=6, block_size=4))
    cfg = GenerationConfig(temperature=0, max_new_tokens=12, ignore_eos=True)
    for sid, p in enumerate(prompts([3, 3, 3])):
        core.add_request(sid, p, cfg)
    while not core.stats["preempted"]:
        core.step()
    assert [s.session_id for s in core.scheduler.waiting][0] == 2      # the newest, at the front
    assert [s.session_id for s in core.scheduler.running] == [0, 1]


def test_max_batch_size(model, mixed):
    ps, refs = mixed
    core = EngineCore.build(model, engine_config(num_blocks=64, block_size=4, max_batch_size=2))
    seen = []
    got = run_all(core, list(enumerate(ps)), on_step=lambda c: seen.append(len(c.scheduler.running)))
    assert max(seen) <= 2
    assert [got[i] for i in range(len(ps))] == refs


def test_no_starvation_under_a_steady_stream(model):
    """A new request every step, on a cache that fits two: the first finishes, and requests finish in
    arrival order (FCFS), however many keep arriving."""
    core = EngineCore.build(model, engine_config(num_blocks=8, block_size=4, max_batch_size=2))
    cfg = GenerationConfig(temperature=0, max_new_tokens=6, ignore_eos=True)
    finished, sid = [], 0
    for step in range(200):
        core.add_request(sid, prompts([5], seed=sid)[0], cfg)
        sid += 1
        finished += [o.session_id for o in core.step() if o.finish_reason]
    assert finished[:10] == list(range(10))
    assert finished == sorted(finished)


def test_prefix_caching_end_to_end(model):
    core = EngineCore.build(model, engine_config(num_blocks=64, block_size=4, enable_prefix_caching=True))
    shared = prompts([13], seed=9)[0]
    a, b = shared + [5, 6], shared + [7]
    run_all(core, [("a", a)])
    before = core.stats["tokens"]
    got = run_all(core, [("b", b)])["b"]
    assert core.stats["tokens"] - before == len(b) - 12 + GREEDY.max_new_tokens - 1   # 3 cached blocks skipped
    assert got == reference_greedy(model, b, GREEDY.max_new_tokens)
    assert core.block_manager.num_hit_blocks == 3


def test_kv_budget_and_session_len_checks(model):
    from refengine.engine.errors import EngineConfigError
    from refengine.engine.kv_cache import KVCache
    per_block = KVCache.bytes_per_block(model.cfg, 4, 4)
    core = EngineCore.build(model, EngineConfig(cache_max_entry_count=0.0001, cache_block_seq_len=4))
    assert core.block_manager.num_blocks > 1000 * 1000 // per_block        # 0.01% of free RAM, in blocks
    assert core.session_len == model.cfg.max_position_embeddings
    with pytest.raises(EngineConfigError, match="does not fit the KV cache"):
        EngineCore.build(model, engine_config(num_blocks=4, block_size=4, session_len=17))
    small = EngineCore.build(model, engine_config(num_blocks=4, block_size=4))
    assert small.session_len == 16                                           # clamped to the cache
    with pytest.raises(EngineConfigError):
        engine_config(max_batch_size=0)

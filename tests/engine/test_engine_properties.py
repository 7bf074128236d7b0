"""Property test: thousands of random add / step / cancel / end operations on a tiny cache (with and
without prefix caching, sessions and n > 1). Invariants after every operation: block ref counts equal
the number of block tables holding each block, free + used = all; every request ends exactly once
(finish or abort, no output after); at the end every block is free again."""

from collections import Counter

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from refengine.config import SchedulerConfig
from refengine.engine.block_manager import BlockManager
from refengine.engine.core import PENDING, EngineCore
from refengine.engine.errors import SessionBusyError, SessionLengthError, UnknownSessionError
from refengine.engine.scheduler import Scheduler
from refengine.errors import GenerationConfigError
from refengine.sampling_params import GenerationConfig

V = 8


class FakeRunner:
    """Logits from a seeded generator: only the scheduling is exercised."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def run(self, out):
        return self.rng.standard_normal((sum(s.samples for s in out.scheduled), V)).astype(np.float32)

    def can_run_ahead(self, batch_size):
        return True

    def run_ahead(self, out, sampled_ids, sources):
        assert all(s.seq.token_ids[-1] == PENDING for s in out.scheduled)
        assert len(sources) == len(out.scheduled) and max(sources) < len(sampled_ids)
        return self.run(out)


def make_core(num_blocks, block_size, caching, batch, budget, seed, lookahead=False):
    blocks = BlockManager(num_blocks, block_size, caching)
    session_len = num_blocks * block_size
    scheduler = Scheduler(SchedulerConfig(batch, budget, session_len), blocks)
    return EngineCore(FakeRunner(seed), scheduler, session_len, V, stop_token_ids=[0], lookahead=lookahead)


def check_blocks(core):
    bm = core.block_manager
    holders = Counter(b for group in core.sessions.values() for s in group for b in s.block_table)
    for block in bm.blocks:
        assert block.ref_count == holders.get(block.block_id, 0), block.block_id
    assert bm.num_free_blocks == sum(1 for b in bm.blocks if b.ref_count == 0)


op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 5), st.lists(st.integers(1, V - 1), max_size=12),
              st.integers(0, 12), st.booleans(), st.booleans(), st.integers(1, 3)),
    st.tuples(st.just("step"), st.integers(1, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("end"), st.integers(0, 5)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=20, max_size=80), caching=st.booleans(), block_size=st.sampled_from([1, 2, 4]),
       num_blocks=st.integers(6, 16), batch=st.integers(1, 4), budget=st.integers(1, 9), seed=st.integers(0, 99),
       lookahead=st.booleans())
def test_random_operations_keep_the_books_and_free_everything(ops, caching, block_size, num_blocks, batch,
                                                              budget, seed, lookahead):
    """(With lookahead decode too: steps launched before the tokens of the step before are known.)"""
    core = make_core(num_blocks, block_size, caching, batch, budget, seed, lookahead)
    live: dict[tuple, bool] = {}          # (session, index) -> still expecting outputs
    ended: set = set()

    def take(outputs):
        for o in outputs:
            key = (o.session_id, o.index)
            assert key not in ended, f"output after the end: {o}"
            if o.finish_reason is not None:
                ended.add(key)
                live.pop(key, None)

    for kind, *args in ops:
        if kind == "add":
            sid, prompt, max_new, start, end, n = args
            n = n if (start and end) else 1
            cfg = GenerationConfig(temperature=1.0, max_new_tokens=max_new, seed=seed)
            try:
                outs = core.add_request(sid, prompt, cfg, sequence_start=start, sequence_end=end, n=n)
            except (SessionBusyError, UnknownSessionError, SessionLengthError, GenerationConfigError):
                continue
            for i in range(n):
                ended.discard((sid, i))
                live[(sid, i)] = True
            take(outs)
        elif kind == "step":
            for _ in range(args[0]):
                take(core.step())
        else:
            take(core.cancel(args[0]) if kind == "cancel" else core.end_session(args[0]))
        check_blocks(core)
        assert PENDING not in (t for group in core.sessions.values() for q in group for t in q.token_ids)
    steps = 0
    while core.has_work():                 # whatever is left runs to the end: nothing is lost or stuck
        take(core.step())
        steps += 1
        assert steps < 10_000
    assert not live, f"requests never finished: {live}"
    for sid in list(core.sessions):
        take(core.end_session(sid))
    check_blocks(core)
    assert core.block_manager.num_free_blocks == num_blocks
    assert not core.requests and not core.scheduler.parked

"""Stateful sessions: a turn prefills only its new tokens and sees the same logits as one prefill of the
whole conversation; idle sessions are evicted LRU and re-prefilled; end / cancel free everything;
session_len ends a turn with "length" and a reason, and refuses a prompt that cannot fit."""

import numpy as np
import pytest

from refengine.engine.core import EngineCore
from refengine.engine.errors import SessionBusyError, SessionLengthError, UnknownSessionError
from refengine.sampling_params import GenerationConfig
from tiny_engine import VOCAB, engine_config, reference_greedy, reference_logits, tiny_model
from tolerances import assert_close


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=2)


def ids(n, seed):
    return np.random.default_rng(seed).integers(2, VOCAB, size=n).tolist()


def turn(core, sid, input_ids, cfg, start):
    """One turn to completion: (token ids, outputs)."""
    core.add_request(sid, input_ids, cfg, sequence_start=start, sequence_end=False)
    outs = []
    while core.has_work():
        outs += [o for o in core.step() if o.session_id == sid]
    return [t for o in outs for t in o.token_ids], outs


def log_softmax(x):
    x = x.astype(np.float64) - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("caching", [False, True])
def test_three_turns_give_the_logits_of_one_whole_prefill(model, caching):
    core = EngineCore.build(model, engine_config(num_blocks=64, block_size=4, enable_prefix_caching=caching))
    cfg = GenerationConfig(temperature=0, max_new_tokens=5, ignore_eos=True, logprobs=20)
    turns = []
    for k, new in enumerate([ids(7, 0), ids(4, 1), ids(9, 2)]):
        computed_before = core.stats["tokens"]
        _, outs = turn(core, "s", new, cfg, start=k == 0)
        prefill = core.stats["tokens"] - computed_before - (len(outs) - 1)   # minus the decode tokens
        assert prefill == len(new) + (k > 0)       # only the new input (+ the last reply token, uncomputed)
        turns.append((new, outs))
    whole = core.session_token_ids("s")
    ref = log_softmax(reference_logits(model, whole))       # one prefill of the conversation, fresh cache
    pos, got, want = 0, [], []
    for new, outs in turns:
        pos += len(new)
        for j, o in enumerate(outs):                          # output j of this turn sits at pos + j
            choice = o.logprobs[0]
            assert choice.token_id == whole[pos + j] == int(np.argmax(ref[pos + j - 1]))
            top = [t for t, _ in choice.top_logprobs]
            assert top == np.argsort(-ref[pos + j - 1], kind="stable")[:20].tolist()
            got.append([lp for _, lp in choice.top_logprobs])
            want.append(ref[pos + j - 1][top])
        pos += len(outs)
    assert len(got) == 15 and pos == len(whole)
    assert_close(np.array(got), np.array(want), "logits", "float32")


def test_idle_sessions_are_evicted_lru_and_reprefilled(model):
    # 12 blocks of 4: each session holds 3 blocks after its first turn (8 prompt + 4 output tokens)
    core = EngineCore.build(model, engine_config(num_blocks=12, block_size=4))
    cfg = GenerationConfig(temperature=0, max_new_tokens=4, ignore_eos=True)
    replies = {sid: turn(core, sid, ids(8, sid), cfg, start=True)[0] for sid in range(3)}
    turn(core, 0, ids(2, 10), cfg, start=False)              # session 0 used last: 1 is least recent
    held = {s.session_id for s in core.scheduler.parked.values()}
    assert held == {0, 1, 2}
    core.add_request("big", ids(20, 5), cfg)                  # needs 6 blocks: evicts 1 (LRU), then 2
    while core.has_work():
        core.step()
    assert core.stats["evicted"] == 2 and core.stats["preempted"] == 0
    parked = [s.session_id for s in core.scheduler.parked.values()]
    assert parked == [0]
    # session 1 comes back: re-prefilled from its kept token ids, same answer as one full prefill
    history = ids(8, 1) + replies[1]
    assert core.session_token_ids(1) == history
    new = ids(3, 11)
    got, _ = turn(core, 1, new, cfg, start=False)
    assert got == reference_greedy(model, history + new, 4)


def test_end_and_cancel_free_everything(model):
    core = EngineCore.build(model, engine_config(num_blocks=32, block_size=4, enable_prefix_caching=True))
    cfg = GenerationConfig(temperature=0, max_new_tokens=50, ignore_eos=True)
    turn(core, "a", ids(9, 0), GenerationConfig(temperature=0, max_new_tokens=3), start=True)
    core.add_request("b", ids(9, 1), cfg, sequence_end=False)
    core.step()
    core.step()
    aborted = core.cancel("b")                                 # mid-generation
    assert [o.finish_reason for o in aborted] == ["abort"]
    assert core.end_session("a") == []                         # idle: nothing to abort
    assert not core.sessions and not core.requests and not core.has_work()
    assert core.block_manager.num_free_blocks == 32
    assert all(b.ref_count == 0 for b in core.block_manager.blocks)
    with pytest.raises(UnknownSessionError):
        core.add_request("a", ids(2, 0), cfg, sequence_start=False)


def test_session_len_ends_a_turn_with_length_and_a_reason(model):
    core = EngineCore.build(model, engine_config(num_blocks=16, block_size=4, session_len=20))
    cfg = GenerationConfig(temperature=0, max_new_tokens=100, ignore_eos=True)
    got, outs = turn(core, "s", ids(12, 0), cfg, start=True)
    assert len(got) == 8 and outs[-1].finish_reason == "length"
    assert "session_len = 20" in outs[-1].finish_detail
    with pytest.raises(SessionLengthError, match="session length is 20"):
        core.add_request("s", ids(1, 0), cfg, sequence_start=False)     # 20 held + 1 new
    with pytest.raises(SessionLengthError):
        core.add_request("t", ids(20, 0), cfg)
    # the full session is still usable for nothing more, but can be ended
    core.end_session("s")
    assert core.block_manager.num_free_blocks == 16


def test_busy_session_and_max_new_tokens_zero(model):
    core = EngineCore.build(model, engine_config(num_blocks=16, block_size=4))
    cfg = GenerationConfig(temperature=0, max_new_tokens=3, ignore_eos=True)
    core.add_request("s", ids(4, 0), cfg, sequence_end=False)
    with pytest.raises(SessionBusyError):
        core.add_request("s", ids(4, 1), cfg, sequence_start=False)
    while core.has_work():
        core.step()
    zero = core.add_request("s", ids(3, 1), GenerationConfig(max_new_tokens=0), sequence_start=False,
                            sequence_end=False)
    assert [o.finish_reason for o in zero] == ["length"] and len(core.session_token_ids("s")) == 4 + 3 + 3
    got, _ = turn(core, "s", ids(2, 2), cfg, start=False)       # the 3 uncomputed tokens are computed now
    whole = ids(4, 0) + core.session_token_ids("s")[4:7] + ids(3, 1) + ids(2, 2)
    assert got == reference_greedy(model, whole, 3)

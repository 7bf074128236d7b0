"""Lookahead decode (core.py): step n+1 is launched before step n's tokens reach the host. On the NumPy
backend the same engine runs with lookahead forced on; every output must equal that of the plain engine —
greedy and seeded sampling, penalties, log-probabilities, stop strings, n > 1, sessions, cancels, requests
arriving mid-decode, a cache small enough to preempt — and nothing may leak."""

import time

import pytest

from refengine.engine.core import PENDING, EngineCore
from refengine.sampling_params import GenerationConfig
from tiny_engine import CharTokenizer, engine_config, reference_greedy, tiny_model
from workloads import assert_same_outputs, lookahead_workload


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


def build(model, lookahead: bool, **kw) -> EngineCore:
    core = EngineCore.build(model, engine_config(**kw), tokenizer=CharTokenizer())
    core.lookahead = lookahead            # the NumPy runner can run ahead (plain indexing), graphs or not
    return core


@pytest.mark.parametrize("num_blocks,batch", [(64, 8), (12, 8), (64, 2)])
def test_lookahead_gives_the_outputs_of_the_plain_engine(model, num_blocks, batch):
    """(12 blocks of 4: sequences are preempted; batch 2: some are always waiting.)"""
    plain, ahead = build(model, False, num_blocks=num_blocks, max_batch_size=batch), \
        build(model, True, num_blocks=num_blocks, max_batch_size=batch)
    assert_same_outputs(lookahead_workload(plain, text=True), lookahead_workload(ahead, text=True))
    assert plain.stats["ahead"] == 0 and ahead.stats["ahead"] > 0
    for core in (plain, ahead):
        assert core.block_manager.num_free_blocks == num_blocks
        assert not core.requests and not core.sessions and not core.scheduler.running


def test_lookahead_greedy_matches_the_independent_reference(model):
    core = build(model, True)
    prompt = [5, 9, 14, 3, 22]
    core.add_request(0, prompt, GenerationConfig(temperature=0.0, max_new_tokens=16, ignore_eos=True))
    seq, tokens = core.sessions[0][0], []
    while core.has_work():
        tokens += [t for o in core.step() for t in o.token_ids]
        assert PENDING not in seq.token_ids                  # placeholders never outlive a step
    assert tokens == reference_greedy(model, prompt, 16)
    assert core.stats["ahead"] == 15             # the steps of tokens 2 … 16, each launched during the one before


def test_a_finished_sequence_row_is_dropped(model):
    """A sequence ending by a stop token has a row in the step launched ahead; it must not move its counters."""
    core = build(model, True)
    stop = GenerationConfig(temperature=1.0, seed=5, max_new_tokens=40, stop_token_ids=list(range(2, 60)))
    core.add_request("a", [4, 5, 6], stop, sequence_end=False)        # ends on its first token, session kept
    core.add_request("b", [7, 8], GenerationConfig(temperature=0.0, max_new_tokens=6, ignore_eos=True))
    outputs = core.step()
    assert {o.session_id: o.finish_reason for o in outputs}["a"] == "stop"
    seq_a = core.sessions["a"][0]
    assert core.stats["ahead"] == 1 and seq_a.num_computed == seq_a.num_tokens - 1
    while core.has_work():
        core.step()
    assert seq_a.num_computed == seq_a.num_tokens - 1              # the row launched ahead was dropped


def test_the_engine_thread_with_lookahead(model):
    """Requests from several threads at once, arriving while steps launched ahead are in flight, one stream
    abandoned half way: every completed request gets the plain engine's tokens, and every block comes back."""
    from concurrent.futures import ThreadPoolExecutor

    from refengine.engine.engine import Engine
    configs = [GenerationConfig(temperature=0.0, max_new_tokens=14, ignore_eos=True),
               GenerationConfig(temperature=0.8, seed=3, max_new_tokens=11, ignore_eos=True),
               GenerationConfig(temperature=0.7, top_k=4, repetition_penalty=1.2, seed=9, max_new_tokens=9,
                                ignore_eos=True)]
    prompts = [[5 + i, 9, 14 + i, 3 + 2 * i][: 2 + i % 3] for i in range(9)]

    def run(engine):
        def one(i):
            return [t for o in engine.infer(f"r{i}", input_ids=prompts[i], gen_config=configs[i % 3])
                    for t in o.token_ids]

        def abandoned():
            stream = engine.stream("gone", input_ids=[7, 7, 8], gen_config=configs[0])
            next(stream)
            stream.close()                                   # the caller goes away: the request is cancelled
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(one, i) for i in range(len(prompts))] + [pool.submit(abandoned)]
            return [f.result() for f in futures[:-1]]

    with Engine(model, CharTokenizer(), engine_config(num_blocks=64, block_size=4)) as plain, \
            Engine(model, CharTokenizer(), engine_config(num_blocks=64, block_size=4)) as ahead:
        ahead.core.lookahead = True
        assert run(plain) == run(ahead)
        assert ahead.core.stats["ahead"] > 0
        for engine in (plain, ahead):
            deadline = time.monotonic() + 10
            while engine.core.block_manager.num_free_blocks != 64 and time.monotonic() < deadline:
                time.sleep(0.01)                  # the abandoned stream's cancel is a command
            assert engine.core.block_manager.num_free_blocks == 64


def test_a_request_arriving_while_a_step_runs_ahead_is_served(model):
    """The completion of a step launched ahead gives tokens without launching a step itself (a request now
    waits, so the next step is not pure decode): the engine thread must go on stepping, not sleep until
    another command comes."""
    import threading

    from refengine.engine.engine import Engine
    cfg = GenerationConfig(temperature=0.0, max_new_tokens=8, ignore_eos=True)
    got = {}
    with Engine(model, CharTokenizer(), engine_config(num_blocks=64, block_size=4)) as engine:
        engine.core.lookahead = True
        run_ahead = engine.core.runner.run_ahead
        engine.core.runner.run_ahead = lambda *a: time.sleep(0.02) or run_ahead(*a)   # a step stays in flight

        def both():
            first = engine.stream("a", input_ids=[5, 9, 14], gen_config=cfg)
            head = [next(first)]
            time.sleep(0.005)                         # the engine thread is inside a step launched ahead
            got["b"] = engine.infer("b", input_ids=[7, 3], gen_config=cfg)[0]
            got["a"] = head + list(first)
        reader = threading.Thread(target=both, daemon=True)   # daemon: a hang fails the test, not the run
        reader.start()
        reader.join(timeout=20)
        assert not reader.is_alive(), "the engine stopped stepping with work queued"
    assert sum(len(o.token_ids) for o in got["a"]) == 8 and len(got["b"].token_ids) == 8

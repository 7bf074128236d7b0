"""A scripted engine workload for comparing two engine cores output by output (lookahead decode on and off,
on the NumPy backend in tests/engine and on the GPU in tests/kernels)."""

import numpy as np
import pytest

from refengine.sampling_params import GenerationConfig

CONFIGS = {
    "greedy": GenerationConfig(temperature=0.0, max_new_tokens=12, ignore_eos=True),
    "seeded": GenerationConfig(temperature=0.9, top_p=0.9, seed=7, max_new_tokens=10, ignore_eos=True),
    "penalised": GenerationConfig(temperature=0.7, top_k=5, repetition_penalty=1.3, frequency_penalty=0.4,
                                  seed=11, max_new_tokens=9, ignore_eos=True, logprobs=3),
    "stop": GenerationConfig(temperature=1.0, seed=5, max_new_tokens=30, stop_token_ids=[3, 4], ignore_eos=True),
    "stop_text": GenerationConfig(temperature=1.0, seed=5, max_new_tokens=30, stop=["a"], ignore_eos=True),
    "short": GenerationConfig(temperature=0.0, max_new_tokens=2, ignore_eos=True),
}


def lookahead_workload(core, text: bool = False) -> dict:
    """A scripted mix of requests added, cancelled and continued between steps (prompt ids in [2, 40));
    returns every output, keyed by (session, completion index), in arrival order. text: a request with a stop
    string too (the core needs a tokenizer)."""
    got: dict = {}

    def take(outputs):
        for o in outputs:
            got.setdefault((o.session_id, o.index), []).append(
                (o.token_ids, o.text, o.finish_reason, [(c.token_id, c.logprob, c.top_logprobs) for c in o.logprobs]))

    rng = np.random.default_rng(0)
    prompt = lambda n: [int(t) for t in rng.integers(2, 40, n)]
    take(core.add_request("g", prompt(7), CONFIGS["greedy"]))
    take(core.add_request("s", prompt(5), CONFIGS["seeded"]))
    take(core.add_request("n2", prompt(6), CONFIGS["seeded"], n=2))
    for step in range(40):
        take(core.step())
        if step == 3:                                     # arrivals mid-decode: the next step is not pure decode
            take(core.add_request("p", prompt(9), CONFIGS["penalised"]))
            take(core.add_request("chat", prompt(4), CONFIGS["short"], sequence_end=False))
        if step == 6:
            take(core.cancel("s"))                        # cancelled with a step in flight
            take(core.add_request("stop", prompt(3), CONFIGS["stop"]))
            if text:
                take(core.add_request("stop_text", prompt(3), CONFIGS["stop_text"]))
        if step == 9 and core.sessions["chat"][0].status.value == "idle":
            take(core.add_request("chat", prompt(3), CONFIGS["greedy"], sequence_start=False, sequence_end=False))
    while core.has_work():
        take(core.step())
    take(core.end_session("chat"))
    return got


def assert_same_outputs(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        assert len(a[key]) == len(b[key]), key
        for (ids_a, text_a, fin_a, lp_a), (ids_b, text_b, fin_b, lp_b) in zip(a[key], b[key]):
            assert (ids_a, text_a, fin_a) == (ids_b, text_b, fin_b), key
            for (ta, la, topa), (tb, lb, topb) in zip(lp_a, lp_b):
                assert ta == tb and la == pytest.approx(lb, abs=1e-5), key
                assert [t for t, _ in topa] == [t for t, _ in topb], key



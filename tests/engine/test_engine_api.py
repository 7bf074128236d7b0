"""The engine's API (background thread; async and sync callers) and the pipeline on it, with a tiny
random model and a character tokenizer. Results are checked against an independent full-prefill loop."""

import asyncio
import time

import numpy as np
import pytest

from refengine.engine.engine import Engine, EngineStepError
from refengine.engine.errors import SessionBusyError, SessionLengthError, UnknownSessionError
from refengine.errors import GenerationConfigError
from refengine.model.loader import LoadedModel
from refengine.pipeline import Pipeline
from refengine.sampling_params import GenerationConfig
from tiny_engine import EOS, VOCAB, CharTokenizer, engine_config, reference_greedy, reference_logits, tiny_model

TOK = CharTokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=3)


@pytest.fixture
def engine(model):
    with Engine(model, TOK, engine_config(num_blocks=64, block_size=4, session_len=120)) as e:
        yield e


def greedy(n, **kw):
    return GenerationConfig(temperature=0, max_new_tokens=n, **kw)


def ids(n, seed):
    return np.random.default_rng(seed).integers(2, VOCAB, size=n).tolist()


async def collect(agen):
    return [o async for o in agen]


def test_async_stream_yields_increments_with_usage(engine, model):
    prompt = ids(6, 0)
    outs = asyncio.run(collect(engine.stream_infer("s", input_ids=prompt, gen_config=greedy(8, ignore_eos=True))))
    assert all(len(o.token_ids) == 1 for o in outs) and len(outs) == 8
    tokens = [t for o in outs for t in o.token_ids]
    assert tokens == reference_greedy(model, prompt, 8)
    assert "".join(o.text for o in outs) == TOK.decode(tokens)
    assert [o.finish_reason for o in outs] == [None] * 7 + ["length"]
    assert (outs[-1].usage.prompt_tokens, outs[-1].usage.completion_tokens) == (6, 8)
    assert engine.core.block_manager.num_free_blocks == 64


def test_a_reader_that_falls_behind_gets_the_backlog_merged(engine, model):
    prompt = ids(6, 3)
    run = engine.core.runner.run
    engine.core.runner.run = lambda out: time.sleep(0.002) or run(out)

    async def slow_reader():
        outs = []
        async for out in engine.stream_infer("slow", input_ids=prompt, gen_config=greedy(12, ignore_eos=True),
                                             merge_backlog=True):
            outs.append(out)
            await asyncio.sleep(0.03)                   # ~10 engine steps pass between two reads
        return outs
    try:
        outs = asyncio.run(slow_reader())
    finally:
        engine.core.runner.run = run
    tokens = [t for o in outs for t in o.token_ids]
    assert tokens == reference_greedy(model, prompt, 12) and len(outs) < 12
    assert "".join(o.text for o in outs) == TOK.decode(tokens)
    assert outs[-1].finish_reason == "length" and outs[-1].usage.completion_tokens == 12


def test_bad_requests_raise_typed_errors_and_the_engine_keeps_serving(engine, model):
    prompt = ids(5, 1)
    run = engine.core.runner.run
    engine.core.runner.run = lambda out: time.sleep(0.01) or run(out)     # session "a" stays busy a while

    async def main():
        good = asyncio.ensure_future(collect(engine.stream_infer("a", input_ids=prompt, sequence_end=False,
                                                                 gen_config=greedy(30, ignore_eos=True))))
        await asyncio.sleep(0)                              # "a" is queued first
        errors = []
        for kwargs in [dict(session_id="nobody", input_ids=[3], sequence_start=False),
                       dict(session_id="long", input_ids=ids(121, 2)),
                       dict(session_id="a", input_ids=[3], sequence_start=False),
                       dict(session_id="a", input_ids=[3])]:
            with pytest.raises((UnknownSessionError, SessionLengthError, SessionBusyError)) as e:
                await collect(engine.stream_infer(gen_config=greedy(3), **kwargs))
            errors.append(type(e.value))
        with pytest.raises(GenerationConfigError, match="max_new_tokens"):
            await collect(engine.stream_infer("x", input_ids=[3], gen_config=GenerationConfig(max_new_tokens=-1)))
        return errors, await good

    errors, outs = asyncio.run(main())
    assert not outs[-1].finish_reason is None and len(outs) == 30   # it ran while the errors were raised
    assert errors == [UnknownSessionError, SessionLengthError, SessionBusyError, SessionBusyError]
    assert [t for o in outs for t in o.token_ids] == reference_greedy(model, prompt, 30)


def test_stop_string_of_several_tokens_is_trimmed(engine, model):
    prompt = ids(7, 4)
    ref = reference_greedy(model, prompt, 20)
    text = TOK.decode(ref)
    stop = text[5:8]                                        # three characters: three tokens
    [out] = engine.infer(input_ids=prompt, gen_config=greedy(20, ignore_eos=True, stop=(stop,)))
    assert out.finish_reason == "stop"
    assert out.text == text[:text.index(stop)]
    assert out.token_ids == ref[:text.index(stop) + 3]       # the tokens are kept, the text trimmed


def test_eos_and_stop_token_ids_end_the_turn(engine, model):
    prompt = ids(7, 5)
    ref = reference_greedy(model, prompt, 10)
    [out] = engine.infer(input_ids=prompt, gen_config=greedy(10, stop_token_ids=(ref[3],)))
    assert out.finish_reason == "stop" and out.token_ids == ref[:ref.index(ref[3]) + 1]
    assert EOS in TOK.stop_token_ids


def test_n_completions_share_the_prompt_and_each_is_right(engine, model):
    prompt = ids(10, 6)                                      # 2 full blocks + a shared partial one
    cfg = GenerationConfig(temperature=1.0, max_new_tokens=6, seed=7, logprobs=3, ignore_eos=True)
    outs = engine.infer(input_ids=prompt, gen_config=cfg, n=3)
    assert [o.index for o in outs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in outs}) > 1       # they sample differently
    for o in outs:                                           # and each sees its own (copied-on-write) history
        ref = reference_logits(model, prompt + o.token_ids)
        ref = ref - ref.max(-1, keepdims=True)
        ref = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
        for j, choice in enumerate(o.logprobs):
            assert abs(choice.logprob - ref[len(prompt) + j - 1][choice.token_id]) < 1e-4
    assert engine.core.block_manager.num_free_blocks == 64


def test_n_completions_share_blocks(model):
    from refengine.engine.core import EngineCore
    core = EngineCore.build(model, engine_config(num_blocks=16, block_size=4))
    core.add_request("s", ids(10, 6), GenerationConfig(temperature=1.0, max_new_tokens=4, seed=1), n=3)
    core.step()                                              # prefill + the three first tokens
    tables = [s.block_table for s in core.sessions["s"]]
    assert len(tables) == 3 and tables[0][:2] == tables[1][:2] == tables[2][:2]
    assert core.block_manager.num_free_blocks == 16 - 3
    core.step()                                              # each writes token 11 into block 2: copies
    assert len({t[2] for t in (s.block_table for s in core.sessions["s"])}) == 3


def test_cancel_and_abandoned_stream_free_the_blocks(engine):
    stream = engine.stream("c", input_ids=ids(5, 7), gen_config=greedy(100, ignore_eos=True))
    next(stream)
    engine.cancel("c")
    assert [o.finish_reason for o in stream][-1] == "abort"
    stream = engine.stream("d", input_ids=ids(5, 8), gen_config=greedy(100, ignore_eos=True))
    next(stream)
    stream.close()                                           # the caller walks away
    engine.infer(input_ids=[3], gen_config=greedy(1))        # a round trip through the engine thread
    assert engine.core.block_manager.num_free_blocks == 64 and not engine.core.sessions


def test_chat_session_over_messages_holds_the_whole_conversation(engine):
    cfg = greedy(6, ignore_eos=True)
    conversation = [{"role": "user", "content": "hi"}]
    [first] = engine.infer("chat", conversation, cfg, sequence_end=False)
    [second] = engine.infer("chat", "ok?", cfg, sequence_start=False, sequence_end=False)
    assert second.usage.prompt_tokens == len("\nu:ok?\na:")   # only what the session lacked
    conversation += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "ok?"}]
    held = engine.session_token_ids("chat")
    assert held == TOK.encode_chat(conversation) + second.token_ids
    engine.end_session("chat")


def test_a_failing_step_fails_its_requests_only(model):
    with Engine(model, TOK, engine_config(num_blocks=32, block_size=4)) as engine:
        run = engine.core.runner.run
        engine.core.runner.run = lambda out: (_ for _ in ()).throw(RuntimeError("boom"))
        with pytest.raises(EngineStepError):
            engine.infer(input_ids=[3, 4], gen_config=greedy(2))
        engine.core.runner.run = run
        [out] = engine.infer(input_ids=[3, 4], gen_config=greedy(2, ignore_eos=True))
        assert len(out.token_ids) == 2 and engine.core.block_manager.num_free_blocks == 32


def test_pipeline_batch_equals_each_prompt_alone(model):
    loaded = LoadedModel(model.cfg, model.weights, TOK, "tiny")
    pipe = Pipeline(loaded, backend="numpy", engine_config=engine_config(num_blocks=40, block_size=4))
    prompts = [ids(n, 10 + n) for n in (2, 9, 4, 17, 1)]
    batch = pipe(prompts, max_new_tokens=7, temperature=0, ignore_eos=True)
    assert [r.token_ids for r in batch] == [reference_greedy(model, p, 7) for p in prompts]
    assert [r.input_token_len for r in batch] == [2, 9, 4, 17, 1]
    assert all(r.generate_token_len == 7 and r.finish_reason == "length" for r in batch)
    chunks = list(pipe.stream(prompts[1], max_new_tokens=7, temperature=0, ignore_eos=True))
    assert [t for c in chunks for t in c.token_ids] == batch[1].token_ids
    with pytest.raises(GenerationConfigError):
        pipe(prompts[0], max_new_tokens=-1)
    pipe.close()

"""The live server through the official `openai` package, unchanged: whatever it parses, any OpenAI
client parses. Greedy, short outputs; answers are checked against the engine driven directly."""

from __future__ import annotations

import math

import pytest

from http_helpers import MODEL_NAME, wait_idle

openai = pytest.importorskip("openai")

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def reference(demo_pipeline):
    """The same greedy requests, run by the pipeline (no HTTP)."""
    chat = demo_pipeline(QUESTION, temperature=0, max_new_tokens=8)
    raw = demo_pipeline("The capital of France is", do_preprocess=False, temperature=0, max_new_tokens=8)
    return chat, raw


def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_chat_completion_matches_the_engine(client, reference):
    r = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL_NAME
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content == reference[0].text
    assert choice.finish_reason == reference[0].finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (reference[0].input_token_len,
                                                                   reference[0].generate_token_len)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_matches_the_engine(client, reference):
    r = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == reference[1].text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 8


def test_streamed_chat_with_usage_gives_the_same_text(client, reference):
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reference[0].finish_reason
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == reference[0].generate_token_len
    assert all(c.usage is None for c in chunks[:-1])


def test_n_2_and_several_prompts_number_the_choices(client, reference):
    r = client.completions.create(model=MODEL_NAME, prompt=["The capital of France is", "1, 2, 3,"], n=2,
                                  max_tokens=8, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text == reference[1].text
    assert r.choices[2].text == r.choices[3].text != r.choices[0].text
    assert r.usage.completion_tokens == 32
    streamed = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=8, temperature=0, n=2,
                                              stream=True)
    texts = ["", ""]
    for chunk in streamed:
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
    assert texts == [reference[0].text] * 2


def test_stop_strings_of_several_tokens_end_the_text(client, reference):
    full = reference[1].text                                   # " Paris.\n\n..."
    cut = full.index("Paris") + len("Pa")
    r = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=8, temperature=0,
                                  stop=["nowhere", "ris."])
    assert r.choices[0].text == full[:cut] and r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=8, temperature=0,
                                       stop="of France")
    assert r.choices[0].message.content == reference[0].text.split("of France")[0]


def test_chat_logprobs_are_the_model_distribution(client, reference):
    r = client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=8, temperature=0,
                                       logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 3
        assert math.isclose(e.logprob, e.top_logprobs[0].logprob)      # greedy: the chosen token is the best
        assert e.top_logprobs[0].token == e.token and bytes(e.bytes) == e.token.encode()
    assert "".join(e.token for e in entries).startswith(reference[0].text[:5])


def test_completion_logprobs_use_the_legacy_shape(client, reference):
    r = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=8, temperature=0,
                                  logprobs=2)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text == reference[1].text
    assert len(lp.token_logprobs) == 8 and all(x <= 0 for x in lp.token_logprobs)
    assert all(len(top) == 2 for top in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])


def test_client_mistakes_raise_the_matching_openai_errors(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=QUESTION, temperature=3)
    assert e.value.status_code == 400 and e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "wizard", "content": "hi"}])
    assert e.value.body["param"] == "messages[0].role"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-17", messages=QUESTION)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt=list(range(3, 1103)), max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    wait_idle(server.url)


def test_api_keys_and_the_concurrency_limit(make_server):
    live = make_server(api_keys=("k1", "k2"), max_concurrent_requests=1)
    url = live.url + "/v1"
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    assert e.value.body["code"] == "invalid_api_key"
    good = openai.OpenAI(base_url=url, api_key="k2", max_retries=0)
    assert good.models.list().data[0].id == MODEL_NAME
    stream = good.completions.create(model=MODEL_NAME, prompt="Once upon a time", max_tokens=500, stream=True,
                                     extra_body={"ignore_eos": True})
    next(iter(stream))                                     # the first request is generating
    with pytest.raises(openai.RateLimitError) as e:
        good.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2)
    assert e.value.response.headers["Retry-After"] == "1"
    stream.close()
    wait_idle(live.url)

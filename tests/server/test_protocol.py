"""Request parsing without a server: defaults, the mapping onto GenerationConfig, and which field a
mistake is blamed on."""

from __future__ import annotations

import pytest

from refengine.server.errors import ApiError
from refengine.server.protocol import (parse_chat, parse_completion, parse_encode, parse_interactive,
                                       parse_json)

MSG = [{"role": "user", "content": "Hi"}]


def test_chat_defaults_follow_openai():
    req = parse_chat({"messages": MSG}, session_len=100)
    cfg = req.gen_config
    assert (cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens, cfg.logprobs) == (1.0, 1.0, 0, 100, None)
    assert (req.n, req.stream, req.include_usage, req.session_id, req.model) == (1, False, False, None, None)
    assert req.turns[0].messages == MSG and req.turns[0].do_preprocess


def test_chat_fields_map_onto_the_generation_config():
    req = parse_chat({"messages": [{"role": "developer", "content": [{"type": "text", "text": "Be "},
                                                                     {"type": "text", "text": "brief"}]},
                                   {"role": "assistant", "content": None}, *MSG],
                      "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0, "stop": "x",
                      "logprobs": True, "top_logprobs": 4, "seed": 3, "top_k": 2, "min_p": 0.1,
                      "repetition_penalty": 1.2, "presence_penalty": 0.5, "frequency_penalty": -0.5,
                      "ignore_eos": True, "skip_special_tokens": False, "stream": True,
                      "stream_options": {"include_usage": True}, "session_id": -1, "user": "u"}, 100)
    assert req.turns[0].messages[:2] == [{"role": "system", "content": "Be brief"},
                                         {"role": "assistant", "content": ""}]
    cfg = req.gen_config
    assert (cfg.max_new_tokens, cfg.temperature, cfg.stop, cfg.logprobs, cfg.seed, cfg.top_k) == (7, 0, ("x",), 4, 3, 2)
    assert (cfg.min_p, cfg.repetition_penalty, cfg.presence_penalty, cfg.frequency_penalty) == (0.1, 1.2, 0.5, -0.5)
    assert cfg.ignore_eos and not cfg.skip_special_tokens
    assert req.stream and req.include_usage and req.logprobs and req.session_id is None and req.user == "u"


def test_completion_prompts_in_all_four_forms():
    assert parse_completion({"prompt": "a"}).turns[0].messages == "a"
    assert parse_completion({"prompt": "a"}).gen_config.max_new_tokens == 16         # OpenAI's default
    assert [t.messages for t in parse_completion({"prompt": ["a", "b"]}).turns] == ["a", "b"]
    assert parse_completion({"prompt": [1, 2]}).turns[0].input_ids == [1, 2]
    assert [t.input_ids for t in parse_completion({"prompt": [[1], [2, 3]]}).turns] == [[1], [2, 3]]
    assert not parse_completion({"prompt": "a"}).turns[0].do_preprocess
    assert parse_completion({"prompt": "a", "logprobs": 0}).gen_config.logprobs == 0


@pytest.mark.parametrize("body, param", [
    ({"messages": MSG, "temperature": True}, "temperature"),
    ({"messages": MSG, "repetition_penalty": float("inf")}, "repetition_penalty"),
    ({"messages": MSG, "top_p": float("nan")}, "top_p"),
    ({"messages": MSG, "n": 2.5}, "n"),
    ({"messages": MSG, "stop": ["a", 1]}, "stop"),
    ({"messages": MSG, "stream_options": {"include_usage": True}}, "stream_options"),
    ({"messages": MSG, "stream": True, "stream_options": {"include_usage": "y"}}, "stream_options.include_usage"),
    ({"messages": MSG, "stream": True, "stream_options": []}, "stream_options"),
    ({"messages": MSG, "functions": [{}]}, "functions"),
    ({"messages": MSG, "logit_bias": {"1": 2}}, "logit_bias"),
    ({"messages": [MSG[0], 3]}, "messages[1]"),
    ({"messages": MSG, "model": 3}, "model"),
])
def test_chat_mistakes_name_the_field(body, param):
    with pytest.raises(ApiError) as e:
        parse_chat(body, 100)
    assert (e.value.status, e.value.param) == (400, param)


def test_neutral_values_of_unsupported_fields_are_accepted():
    parse_chat({"messages": MSG, "tools": [], "response_format": {"type": "text"}, "logit_bias": {},
                "best_of": 1, "tool_choice": "none", "unknown_field": 1}, 100)
    parse_completion({"prompt": "a", "echo": False, "suffix": ""})


def test_interactive_defaults_are_lmdeploys():
    req = parse_interactive({"prompt": "hi"}, session_len=50)
    cfg = req.gen_config
    assert (req.session_id, req.interactive_mode, req.stream, req.cancel, req.end_only) == (-1, False, False, False,
                                                                                          False)
    assert (cfg.temperature, cfg.top_p, cfg.top_k, cfg.max_new_tokens) == (0.8, 0.8, 40, 50)
    assert parse_interactive({"prompt": "hi", "request_output_len": 3}, 50).gen_config.max_new_tokens == 3
    assert parse_interactive({"session_id": 4, "cancel": True}, 50).cancel
    end = parse_interactive({"prompt": "", "session_id": 4, "request_output_len": 0}, 50)
    assert end.end_only and end.gen_config is None
    keep = parse_interactive({"prompt": "", "session_id": 4, "request_output_len": 0, "interactive_mode": True}, 50)
    assert not keep.end_only
    assert parse_interactive({"prompt": MSG}, 50).prompt == MSG


def test_encode_and_json_bodies():
    assert parse_encode({"input": "a"}).texts == ["a"] and not parse_encode({"input": "a"}).batch
    assert parse_encode({"input": ["a"], "add_bos": False}).batch
    for raw in (b"", b"null", b"[]", b"{", b"[" * 100_000):
        with pytest.raises(ApiError):
            parse_json(raw)
    assert parse_json(b'{"a": 1}') == {"a": 1}

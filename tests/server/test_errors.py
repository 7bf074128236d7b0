"""Every client mistake answers 4xx with OpenAI's error body naming the field; never a 500."""

from __future__ import annotations

import pytest

from http_helpers import MODEL_NAME, call

CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2, "temperature": 0}
COMPLETION = {"model": MODEL_NAME, "prompt": "Hi", "max_tokens": 2, "temperature": 0}


def error_of(status_and_body, status: int) -> dict:
    got, _, body = status_and_body
    assert got == status, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


@pytest.mark.parametrize("change, param", [
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"min_p": 1.5}, "min_p"),
    ({"n": 0}, "n"),
    ({"n": 200}, "n"),
    ({"max_tokens": -1}, "max_tokens"),
    ({"max_completion_tokens": 1.5}, "max_completion_tokens"),
    ({"stop": [""]}, "stop"),
    ({"stop": 3}, "stop"),
    ({"seed": -4}, "seed"),
    ({"presence_penalty": 3}, "presence_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"stream": "yes"}, "stream"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content[0]"),
    ({"tools": [{"type": "function"}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"ignore_eos": 1}, "ignore_eos"),
    ({"session_id": "a"}, "session_id"),
])
def test_bad_chat_fields_are_named(server, change, param):
    error = error_of(call("POST", server.url + "/v1/chat/completions", {**CHAT, **change}), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"].startswith(param)


@pytest.mark.parametrize("change, param", [
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [[1], []]}, "prompt"),
    ({"prompt": [999999]}, "prompt"),                 # outside the vocabulary: the engine's refusal
    ({"prompt": ""}, "prompt"),                       # empty: the engine's refusal
    ({"logprobs": 30}, "logprobs"),
    ({"echo": True}, "echo"),
    ({"best_of": 3}, "best_of"),
    ({"prompt": ["a", "b"], "session_id": 5}, "session_id"),
])
def test_bad_completion_fields_are_named(server, change, param):
    error = error_of(call("POST", server.url + "/v1/completions", {**COMPLETION, **change}), 400)
    assert error["param"] == param


def test_missing_fields_and_unparsable_bodies(server):
    assert error_of(call("POST", server.url + "/v1/chat/completions", {"model": MODEL_NAME}), 400)["param"] == \
        "messages"
    assert error_of(call("POST", server.url + "/v1/completions", {}), 400)["param"] == "prompt"
    assert "JSON" in error_of(call("POST", server.url + "/v1/completions", raw=b"{nope"), 400)["message"]
    assert "object" in error_of(call("POST", server.url + "/v1/completions", raw=b"[1, 2]"), 400)["message"]
    assert error_of(call("POST", server.url + "/v1/completions", raw=b"\xff\xfe"), 400)["param"] is None


def test_too_long_prompt_and_session_in_use_are_400(server):
    long = {**COMPLETION, "prompt": list(range(10, 1100))}
    assert error_of(call("POST", server.url + "/v1/completions", long), 400)["code"] == "context_length_exceeded"
    opened = call("POST", server.url + "/v1/chat/interactive",
                  {"prompt": "Hi", "session_id": 303, "interactive_mode": True, "request_output_len": 2})
    assert opened[0] == 200
    in_use = error_of(call("POST", server.url + "/v1/completions", {**COMPLETION, "session_id": 303}), 400)
    assert in_use["param"] == "session_id"
    call("POST", server.url + "/v1/chat/interactive", {"session_id": 303, "cancel": True})


def test_unknown_routes_models_and_methods(server):
    assert error_of(call("GET", server.url + "/v2/everything"), 404)["code"] == "not_found"
    assert error_of(call("POST", server.url + "/v1/chat/completions", {**CHAT, "model": "nope"}), 404)["code"] == \
        "model_not_found"
    assert error_of(call("GET", server.url + "/v1/models/nope"), 404)["param"] == "model"
    status, headers, body = call("GET", server.url + "/v1/chat/completions")
    assert error_of((status, headers, body), 405)["code"] == "method_not_allowed" and "POST" in headers["Allow"]


def test_a_body_over_the_limit_is_413(server):
    big = {**COMPLETION, "prompt": "x" * (70 * 1024)}                # the test server allows 64 KiB
    assert error_of(call("POST", server.url + "/v1/completions", big), 413)["code"] == "request_too_large"


def test_api_keys_guard_v1_routes_only(make_server):
    live = make_server(api_keys=("alpha", "beta"))
    for headers in ({}, {"Authorization": "Bearer gamma"}, {"Authorization": "Basic alpha"}):
        error = error_of(call("GET", live.url + "/v1/models", headers=headers), 401)
        assert error["code"] == "invalid_api_key"
    assert call("GET", live.url + "/v1/models", headers={"Authorization": "Bearer beta"})[0] == 200
    assert call("POST", live.url + "/v1/completions", COMPLETION, headers={"Authorization": "Bearer alpha"})[0] == 200
    assert error_of(call("POST", live.url + "/v1/chat/interactive", {"prompt": "hi"}), 401)["code"] == \
        "invalid_api_key"
    for path in ("/health", "/metrics", "/openapi.json", "/"):
        assert call("GET", live.url + path)[0] == 200, path


def test_cors_preflight_and_headers(server, make_server):
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = call("OPTIONS", server.url + "/v1/chat/completions", headers=preflight)
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "*"
    assert "authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, _ = call("GET", server.url + "/v1/models", headers={"Origin": "http://ui.example"})
    assert headers["Access-Control-Allow-Origin"] == "*"
    strict = make_server(allow_origins=("http://ui.example",), api_keys=("k",))
    status, headers, _ = call("OPTIONS", strict.url + "/v1/models", headers=preflight)    # no key needed
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "http://ui.example"
    status, headers, _ = call("GET", strict.url + "/v1/models", headers={"Origin": "http://evil.example"})
    assert status == 401 and "Access-Control-Allow-Origin" not in headers
    status, headers, _ = call("GET", strict.url + "/health", headers={"Origin": "http://ui.example"})
    assert headers["Access-Control-Allow-Origin"] == "http://ui.example" and "Origin" in headers["Vary"]

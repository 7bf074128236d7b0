"""LMDeploy's /v1/chat/interactive over raw HTTP: sessions that keep their history, streaming as one JSON
object per line, cancel and end; and /v1/encode."""

from __future__ import annotations

import aiohttp
import pytest

from http_helpers import call, ndjson_lines, run, wait_idle

GREEDY = {"temperature": 0, "request_output_len": 8}


def turn(server, **body):
    status, _, payload = call("POST", server.url + "/v1/chat/interactive", body)
    assert status == 200, payload
    return payload


def test_a_session_keeps_its_history_until_ended(server):
    first = turn(server, prompt="Hi, my name is Ann.", session_id=101, interactive_mode=True, **GREEDY)
    assert first["history_tokens"] == 0 and first["input_tokens"] > 0 and first["tokens"] == 8
    assert first["session_id"] == 101 and first["finish_reason"] == "length"
    second = turn(server, prompt="What is my name?", session_id=101, interactive_mode=True, **GREEDY)
    assert second["history_tokens"] == first["input_tokens"] + first["tokens"]
    assert second["input_tokens"] < first["input_tokens"] + 10          # only the new message is sent
    ended = turn(server, prompt="", session_id=101, interactive_mode=False, request_output_len=0)
    assert ended == {"text": "", "tokens": 0, "input_tokens": 0, "history_tokens": 0, "finish_reason": "stop",
                     "session_id": 101}
    wait_idle(server.url)
    again = turn(server, prompt="What is my name?", session_id=101, **GREEDY)   # a new, stateless session
    assert again["history_tokens"] == 0
    wait_idle(server.url)


def test_session_minus_one_gets_a_fresh_id_and_interactive_false_frees_it(server, demo_pipeline):
    a = turn(server, prompt="Hello!", session_id=-1, interactive_mode=True, **GREEDY)
    b = turn(server, prompt="Hello!", session_id=-1, **GREEDY)
    assert isinstance(a["session_id"], int) and a["session_id"] != b["session_id"]
    # the engine driven directly (chat template, greedy): not empty, not the prompt echoed
    assert a["text"] == b["text"] == demo_pipeline("Hello!", temperature=0, max_new_tokens=8).text != ""
    last = turn(server, prompt="Bye!", session_id=a["session_id"], interactive_mode=False, **GREEDY)
    assert last["history_tokens"] > 0                  # the last turn still sees the history, then it ends
    wait_idle(server.url)


def test_streaming_sends_one_json_object_per_line(server):
    whole = turn(server, prompt="Name three colours.", **GREEDY)

    async def stream():
        async with aiohttp.ClientSession() as s:
            async with s.post(server.url + "/v1/chat/interactive",
                              json={"prompt": "Name three colours.", "stream": True, **GREEDY}) as resp:
                assert resp.status == 200 and resp.content_type == "application/x-ndjson"
                return [line async for line in ndjson_lines(resp)]

    lines = run(stream())
    assert whole["text"] and "".join(line["text"] for line in lines) == whole["text"]
    assert [line["tokens"] for line in lines] == sorted(line["tokens"] for line in lines)
    assert all(line["finish_reason"] is None for line in lines[:-1]) and lines[-1]["finish_reason"] == "length"
    assert set(lines[0]) == {"text", "tokens", "input_tokens", "history_tokens", "finish_reason", "session_id"}
    wait_idle(server.url)


def test_cancel_stops_the_running_turn_and_a_busy_session_is_refused(server):
    async def scenario():
        async with aiohttp.ClientSession() as s:
            body = {"prompt": "Tell me a long story.", "session_id": 202, "interactive_mode": True, "stream": True,
                    "request_output_len": 900, "ignore_eos": True, "temperature": 0}
            async with s.post(server.url + "/v1/chat/interactive", json=body) as resp:
                lines = ndjson_lines(resp)
                seen = [await anext(lines), await anext(lines)]
                async with s.post(server.url + "/v1/chat/interactive",
                                  json={"prompt": "Hi", "session_id": 202, "interactive_mode": True}) as busy:
                    busy_status, busy_body = busy.status, await busy.json()
                async with s.post(server.url + "/v1/chat/interactive",
                                  json={"session_id": 202, "cancel": True}) as cancel:
                    assert cancel.status == 200
                seen += [line async for line in lines]
            return seen, busy_status, busy_body

    seen, busy_status, busy_body = run(scenario())
    assert busy_status == 400 and busy_body["error"]["param"] == "session_id"
    assert seen[-1]["finish_reason"] == "abort" and seen[-1]["tokens"] < 900
    wait_idle(server.url)


@pytest.mark.parametrize("body, param", [
    ({"session_id": -1, "cancel": True}, "session_id"),
    ({"prompt": "", "session_id": -1, "request_output_len": 0}, "session_id"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "hi", "session_id": "seven"}, "session_id"),
    ({"prompt": "hi", "request_output_len": -1}, "request_output_len"),
    ({"prompt": "hi", "top_k": 1.5}, "top_k"),
    ({"prompt": "hi", "interactive_mode": "yes"}, "interactive_mode"),
])
def test_bad_interactive_requests_name_the_field(server, body, param):
    status, _, payload = call("POST", server.url + "/v1/chat/interactive", body)
    assert status == 400 and payload["error"]["param"] == param, payload


def test_encode_gives_the_tokenizer_ids(server, server_engine):
    tok = server_engine.tokenizer
    status, _, one = call("POST", server.url + "/v1/encode", {"input": "Hello world", "add_bos": False})
    assert status == 200 and one == {"input_ids": tok.encode("Hello world", add_special_tokens=False), "length": 2}
    status, _, many = call("POST", server.url + "/v1/encode", {"input": ["a", "b c"], "do_preprocess": True})
    assert many["input_ids"][0] == tok.encode_chat([{"role": "user", "content": "a"}])
    assert many["length"] == [len(ids) for ids in many["input_ids"]]
    status, _, bad = call("POST", server.url + "/v1/encode", {"input": [1, 2]})
    assert status == 400 and bad["error"]["param"] == "input"

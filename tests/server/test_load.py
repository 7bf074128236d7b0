"""Load and faults over raw HTTP: many concurrent streams, clients that go away, the concurrency limit,
and draining on shutdown. Greedy and short, so that it stays quick on a small CPU."""

from __future__ import annotations

import asyncio

import aiohttp

from http_helpers import MODEL_NAME, call, fetch_metrics, metrics, run, sse_events, wait_idle
from refengine.server.context import CTX

PROMPT = {"model": MODEL_NAME, "prompt": "The capital of France is", "temperature": 0}


async def stream_text(session: aiohttp.ClientSession, url: str, body: dict) -> tuple[str, list]:
    async with session.post(url + "/v1/completions", json={**body, "stream": True}) as resp:
        assert resp.status == 200, await resp.text()
        events = [e async for e in sse_events(resp)]
    assert events[-1] == "[DONE]"
    return "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"]), events[:-1]


def test_64_concurrent_streams_all_get_the_single_greedy_answer(server):
    single = call("POST", server.url + "/v1/completions", {**PROMPT, "max_tokens": 8})[2]["choices"][0]["text"]

    async def many():
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            return await asyncio.gather(*(stream_text(s, server.url, {**PROMPT, "max_tokens": 8}) for _ in range(64)))

    results = run(many())
    assert single.strip() and [text for text, _ in results] == [single] * 64
    assert all(events[-1]["choices"][0]["finish_reason"] == "length" for _, events in results)
    wait_idle(server.url)


def test_a_client_that_disconnects_frees_its_kv_blocks(server):
    before = metrics(server.url)["refengine_generation_tokens_total"]

    async def leave_mid_stream():
        async with aiohttp.ClientSession() as s:
            resp = await s.post(server.url + "/v1/completions",
                                json={**PROMPT, "max_tokens": 1000, "ignore_eos": True, "stream": True})
            events = sse_events(resp)
            await anext(events)
            await anext(events)
            assert (await fetch_metrics(server.url))["refengine_kv_blocks_used"] > 0
            resp.close()                                     # drop the connection mid-stream

    async def leave_while_waiting():
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as s:
            try:
                await s.post(server.url + "/v1/completions", json={**PROMPT, "max_tokens": 1000, "ignore_eos": True})
            except asyncio.TimeoutError:
                return
        raise AssertionError("a 1000-token completion should not finish within 1 s on this model")

    run(leave_mid_stream())
    run(leave_while_waiting())
    after = wait_idle(server.url)
    assert after["refengine_generation_tokens_total"] - before < 1000      # neither ran to its end
    _, _, text = call("GET", server.url + "/metrics")
    assert 'route="/v1/completions",status="499"' in text


def test_beyond_the_concurrency_limit_answers_429_and_while_draining_503(make_server):
    live = make_server(max_concurrent_requests=1)

    async def scenario():
        async with aiohttp.ClientSession() as s:
            resp = await s.post(live.url + "/v1/completions",
                                json={**PROMPT, "max_tokens": 500, "ignore_eos": True, "stream": True})
            await anext(sse_events(resp))
            async with s.post(live.url + "/v1/completions", json={**PROMPT, "max_tokens": 2}) as second:
                refused = second.status, second.headers.get("Retry-After"), await second.json()
            resp.close()
            return refused

    status, retry_after, body = run(scenario())
    assert (status, retry_after, body["error"]["code"]) == (429, "1", "rate_limit_exceeded")
    wait_idle(live.url)
    live.app[CTX].admission.draining = True
    status, headers, body = call("POST", live.url + "/v1/completions", {**PROMPT, "max_tokens": 2})
    assert (status, headers["Retry-After"], body["error"]["code"]) == (503, "1", "server_draining")
    assert call("GET", live.url + "/health")[0] == 503
    live.app[CTX].admission.draining = False


def test_shutdown_drains_requests_in_flight_then_cancels_the_rest(make_server):
    patient = make_server(drain_timeout=60)
    hasty = make_server(drain_timeout=0.2)

    async def stop_during_stream(live, max_tokens):
        async with aiohttp.ClientSession() as s:
            body = {**PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
            async with s.post(live.url + "/v1/completions", json=body) as resp:
                events = sse_events(resp)
                first = await anext(events)
                stopping = asyncio.get_running_loop().run_in_executor(None, live.stop)
                rest = [first] + [e async for e in events]
            await stopping
        return rest

    drained = run(stop_during_stream(patient, 12))
    assert drained[-1] == "[DONE]" and drained[-2]["choices"][0]["finish_reason"] == "length"
    assert "".join(e["choices"][0]["text"] for e in drained[:-1]) != ""
    aborted = run(stop_during_stream(hasty, 1000))
    assert aborted[-1] == "[DONE]" and aborted[-2]["choices"][0]["finish_reason"] == "abort"
    assert sum(1 for e in aborted[:-1] if e["choices"][0]["text"]) < 1000

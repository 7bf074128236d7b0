"""Small aiohttp-client helpers for the server tests (each call runs its own event loop)."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

MODEL_NAME = "smollm2-test"        # what the live test server calls the default model


def run(coro):
    return asyncio.run(coro)


async def request(method: str, url: str, body=None, headers=None, raw: bytes | None = None):
    """(status, headers, parsed JSON or text)."""
    async with aiohttp.ClientSession() as session:
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        async with session.request(method, url, data=data, headers=hdrs) as resp:
            text = await resp.text()
            try:
                payload = json.loads(text)
            except json.JSONDecodeError:
                payload = text
            return resp.status, resp.headers, payload


def call(method: str, url: str, body=None, headers=None, raw: bytes | None = None):
    return run(request(method, url, body, headers, raw))


async def sse_events(resp: aiohttp.ClientResponse):
    """The JSON objects of a server-sent-event stream, then the string "[DONE]"."""
    async for line in resp.content:
        line = line.strip()
        if not line:
            continue
        assert line.startswith(b"data: "), line
        data = line[len(b"data: "):]
        yield "[DONE]" if data == b"[DONE]" else json.loads(data)


async def ndjson_lines(resp: aiohttp.ClientResponse):
    async for line in resp.content:
        assert line.endswith(b"\n"), line
        yield json.loads(line)


async def fetch_metrics(url: str) -> dict[str, float]:
    """Unlabelled samples of /metrics (name -> value)."""
    status, _, text = await request("GET", url + "/metrics")
    assert status == 200
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.split()
            out[name] = float(value)
    return out


def metrics(url: str) -> dict[str, float]:
    return run(fetch_metrics(url))


def wait_idle(url: str, timeout: float = 30.0) -> dict[str, float]:
    """Poll /metrics until no request is in flight and no KV block is used; the last sample."""
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(url)
        if (m["refengine_requests_in_flight"], m["refengine_kv_blocks_used"], m["refengine_sessions"]) == (0, 0, 0):
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"server not idle after {timeout} s: {m}")
        time.sleep(0.05)

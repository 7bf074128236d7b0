"""The two streaming wire formats.

Server-sent events (OpenAI routes): one event per chunk, then a terminator.

    data: {"id": "chatcmpl-…", "object": "chat.completion.chunk", …}\\n\\n
    data: {…}\\n\\n
    data: [DONE]\\n\\n

Newline-delimited JSON (LMDeploy's /v1/chat/interactive, what its api_client reads line by line):

    {"text": "The", "tokens": 1, "input_tokens": 37, "history_tokens": 0, "finish_reason": null}\\n
    {"text": " capital", "tokens": 2, …}\\n

Headers go out when the stream opens; a client that has gone away makes `write` raise
ConnectionResetError, which the route turns into closing its engine stream (that cancels the request).
"""

from __future__ import annotations

import json

from aiohttp import web

from refengine.server.errors import ApiError

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}          # ask nginx-like proxies not to buffer the stream
NDJSON_HEADERS = {"Content-Type": "application/x-ndjson; charset=utf-8", "Cache-Control": "no-cache",
                  "X-Accel-Buffering": "no"}


def dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


async def open_stream(request: web.Request, headers: dict) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=headers)
    await response.prepare(request)
    return response


async def send_event(response: web.StreamResponse, obj: dict) -> None:
    await response.write(b"data: " + dumps(obj) + b"\n\n")


async def send_done(response: web.StreamResponse) -> None:
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()


async def send_line(response: web.StreamResponse, obj: dict) -> None:
    await response.write(dumps(obj) + b"\n")


async def send_failure(response: web.StreamResponse, e: Exception, ndjson: bool = False) -> None:
    """The engine failed mid-stream (a bug): the 200 is already sent, so say it in the stream and end it."""
    body = ApiError(500, f"generation failed: {e}", type="server_error", code="internal_error").body()
    try:
        if ndjson:
            await send_line(response, body)
            await response.write_eof()
        else:
            await send_event(response, body)
            await send_done(response)
    except ConnectionResetError:
        pass

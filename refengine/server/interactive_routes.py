"""LMDeploy's own routes: POST /v1/chat/interactive (stateful sessions) and POST /v1/encode.

/v1/chat/interactive, as LMDeploy's api_server and api_client use it:

    {"prompt": "Hi", "session_id": 7, "interactive_mode": true}     a turn of session 7; the session keeps
                                                                     its history (and KV blocks) for the next
    {"prompt": "And?", "session_id": 7, "interactive_mode": true}   continues it: history_tokens > 0
    {"session_id": 7, "cancel": true}                                stops session 7's running turn (it ends
                                                                     with finish_reason "abort") and frees it
    {"prompt": "", "session_id": 7, "interactive_mode": false,      ends session 7
     "request_output_len": 0}

A turn of a session the engine does not hold starts it; interactive_mode false ends the session after
the turn. session_id -1 asks for a fresh session (its number comes back as `session_id`).
Answer: {"text", "tokens", "input_tokens", "history_tokens", "finish_reason", "session_id"}; with
"stream": true the same objects, one JSON object per line (text is the increment, tokens counts the
tokens generated so far), not server-sent events.
"""

from __future__ import annotations

import logging
from contextlib import aclosing

from aiohttp import web

from refengine.server.context import CTX, ServerContext
from refengine.server.protocol import INTERACTIVE_NAMES, parse_encode, parse_interactive, read_json
from refengine.server.sse import NDJSON_HEADERS, open_stream, send_failure, send_line
from refengine.server.streams import EngineCall, first_output, generate

logger = logging.getLogger("refengine.server")

def reply(session_id: int, text: str = "", out=None) -> dict:
    usage = out.usage if out is not None else None
    return {"text": text, "tokens": usage.completion_tokens if usage else 0,
            "input_tokens": usage.prompt_tokens if usage else 0,
            "history_tokens": usage.history_tokens if usage else 0,
            "finish_reason": out.finish_reason if out is not None else "stop", "session_id": session_id}


async def chat_interactive(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    req = parse_interactive(await read_json(request), ctx.session_len)
    if req.cancel or req.end_only:
        ctx.engine.cancel(req.session_id)        # ending and cancelling both free the session
        return web.json_response(reply(req.session_id))
    sid = ctx.new_interactive_id() if req.session_id == -1 else req.session_id
    call = EngineCall(sid, req.prompt, sequence_start=ctx.engine.session_token_ids(sid) is None,
                      sequence_end=not req.interactive_mode)
    async with ctx.admission.slot([sid]):
        async with aclosing(generate(ctx, [call], req.gen_config)) as outputs:
            _, first = await first_output(outputs, INTERACTIVE_NAMES)
            if req.stream:
                return await _stream(request, sid, first, outputs)
            text, last = first.text, first
            async for _, last in outputs:
                text += last.text
            return web.json_response(reply(sid, text, last))


async def _stream(request, sid: int, first, outputs) -> web.StreamResponse:
    response = await open_stream(request, NDJSON_HEADERS)
    try:
        await _line(response, sid, first)
        async for _, out in outputs:
            await _line(response, sid, out)
        await response.write_eof()
    except ConnectionResetError:
        logger.info("client went away during session %s's turn; the turn is cancelled", sid)
    except Exception as e:
        logger.exception("interactive stream failed")
        await send_failure(response, e, ndjson=True)
    return response


async def _line(response, sid: int, out) -> None:
    if out.text or out.finish_reason is not None:
        await send_line(response, reply(sid, out.text, out))


async def encode(request: web.Request) -> web.Response:
    ctx: ServerContext = request.app[CTX]
    req = parse_encode(await read_json(request))
    tok = ctx.tokenizer
    ids = [tok.encode_chat([{"role": "user", "content": t}]) if req.do_preprocess
           else tok.encode(t, add_special_tokens=req.add_bos) for t in req.texts]
    if req.batch:
        return web.json_response({"input_ids": ids, "length": [len(i) for i in ids]})
    return web.json_response({"input_ids": ids[0], "length": len(ids[0])})

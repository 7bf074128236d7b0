"""OpenAI's routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions.

A generation request is parsed (protocol.py), admitted (admission.py: 429/503), sent to the engine as one
stream_infer call per prompt, and answered whole or as server-sent events (sse.py). The first engine
output is awaited before the answer starts, so an engine refusal is still a clean 400.
"""

from __future__ import annotations

import logging
from contextlib import aclosing

from aiohttp import web

from refengine.server.context import CTX, ServerContext
from refengine.server.errors import ApiError
from refengine.server.protocol import GenerationRequest, parse_chat, parse_completion, read_json
from refengine.server.responses import Shape, Tally
from refengine.server.sse import SSE_HEADERS, open_stream, send_done, send_event, send_failure
from refengine.server.streams import EngineCall, first_output, generate

logger = logging.getLogger("refengine.server")


def model_card(ctx: ServerContext) -> dict:
    return {"id": ctx.model_name, "object": "model", "created": ctx.created, "owned_by": "refengine",
            "root": ctx.model_name, "parent": None, "max_model_len": ctx.session_len}


async def list_models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [model_card(request.app[CTX])]})


async def get_model(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    check_model(ctx, request.match_info["model"])
    return web.json_response(model_card(ctx))


def check_model(ctx: ServerContext, model: str | None) -> None:
    if model is not None and model != ctx.model_name:
        raise ApiError(404, f"The model `{model}` does not exist (this server serves `{ctx.model_name}`).",
                       param="model", code="model_not_found")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    return await _generate(request, ctx, parse_chat(await read_json(request), ctx.session_len))


async def completions(request: web.Request) -> web.StreamResponse:
    return await _generate(request, request.app[CTX], parse_completion(await read_json(request)))


async def _generate(request: web.Request, ctx: ServerContext, req: GenerationRequest) -> web.StreamResponse:
    check_model(ctx, req.model)
    calls = _engine_calls(ctx, req)
    shape = Shape(req.chat, ctx.model_name, ctx.token_text)
    async with ctx.admission.slot(c.session_id for c in calls):
        async with aclosing(generate(ctx, calls, req.gen_config, req.n)) as outputs:
            first = await first_output(outputs, req.field_names)
            tally = Tally(len(calls), req.n)
            if req.stream:
                return await _stream(request, shape, req, tally, first, outputs)
            tally.add(*first)
            async for turn, out in outputs:
                tally.add(turn, out)
            return web.json_response(shape.body(tally))


def _engine_calls(ctx: ServerContext, req: GenerationRequest) -> list[EngineCall]:
    """One stateless engine request per prompt; `session_id` (LMDeploy's extra) names it, e.g. to cancel it
    through /v1/chat/interactive, and must not be a session in use."""
    if req.session_id is None:
        ids = [ctx.engine.new_session_id() for _ in req.turns]
    elif ctx.engine.session_token_ids(req.session_id) is not None or req.session_id in ctx.admission.sessions:
        raise ApiError(400, f"session_id {req.session_id} is in use", param="session_id", code="session_busy")
    else:
        ids = [req.session_id]
    return [EngineCall(sid, t.messages, t.input_ids, t.do_preprocess) for sid, t in zip(ids, req.turns)]


async def _stream(request, shape: Shape, req: GenerationRequest, tally: Tally, first, outputs) -> web.StreamResponse:
    response = await open_stream(request, SSE_HEADERS)
    try:
        if req.chat:                   # OpenAI opens each chat choice with the assistant role
            for i in range(len(tally.choices)):
                await send_event(response, shape.chunk([shape.delta(i, "", [], None, role=True)], None,
                                                       req.include_usage))
        await _send(response, shape, req, tally, *first)
        async for turn, out in outputs:
            await _send(response, shape, req, tally, turn, out)
        if req.include_usage:
            await send_event(response, shape.chunk([], tally.usage(), True))
        await send_done(response)
    except ConnectionResetError:
        logger.info("client went away during a stream; its request is cancelled")
    except Exception as e:             # an engine failure mid-stream: the status line is gone, tell the client
        logger.exception("stream failed")
        await send_failure(response, e)
    return response


async def _send(response, shape: Shape, req: GenerationRequest, tally: Tally, turn: int, out) -> None:
    i = tally.add(turn, out)
    if out.text or out.logprobs or out.finish_reason is not None:
        choice = shape.delta(i, out.text, out.logprobs, out.finish_reason)
        await send_event(response, shape.chunk([choice], None, req.include_usage))


"""One HTTP request's engine streams: started together, merged, measured, and always closed.

    EngineCall ×k ──stream_infer──► async generators ──merge──► (call index, EngineOutput) ──► the route

Closing what `generate` returns (the route leaves its `async with aclosing(...)`: finished, failed, or
cancelled because the client went away) closes every engine stream; an unfinished one cancels its
request in the engine, which frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Hashable

from refengine.engine.request import EngineOutput
from refengine.errors import RefengineError
from refengine.sampling_params import GenerationConfig
from refengine.server.errors import ApiError, from_engine_error

_END = object()


@dataclass
class EngineCall:
    """The arguments of one Engine.stream_infer call."""
    session_id: Hashable
    messages: list[dict] | str | None = None
    input_ids: list[int] | None = None
    do_preprocess: bool = True
    sequence_start: bool = True
    sequence_end: bool = True

    def start(self, engine, gen_config: GenerationConfig, n: int) -> AsyncIterator[EngineOutput]:
        return engine.stream_infer(self.session_id, self.messages, gen_config, self.sequence_start,
                                   self.sequence_end, input_ids=self.input_ids, n=n,
                                   do_preprocess=self.do_preprocess, merge_backlog=True)


async def generate(ctx, calls: list[EngineCall], gen_config: GenerationConfig,
                   n: int = 1) -> AsyncIterator[tuple[int, EngineOutput]]:
    """Outputs of all calls as they come, tagged with the call's index. Counts time to first token
    and tokens into ctx.metrics."""
    start, first, usage = time.perf_counter(), True, {}
    try:
        async with aclosing(_merge([c.start(ctx.engine, gen_config, n) for c in calls])) as merged:
            async for i, out in merged:
                if first and out.token_ids:
                    ctx.metrics.ttft.observe(time.perf_counter() - start)
                    first = False
                usage[i, out.index] = out.usage
                yield i, out
    finally:
        prompts = {i: u.prompt_tokens for (i, _), u in usage.items()}
        ctx.metrics.count_tokens(sum(prompts.values()), sum(u.completion_tokens for u in usage.values()))


async def first_output(outputs: AsyncIterator, field_names: dict[str, str] | None = None):
    """The first output, awaited before any response byte goes out, so that the engine's refusals
    (prompt too long, busy session, ...) still become a 400."""
    try:
        return await anext(outputs)
    except RefengineError as e:
        raise from_engine_error(e, field_names) from None
    except StopAsyncIteration:
        raise ApiError(500, "the engine ended the request without output", type="server_error") from None


async def _merge(streams: list) -> AsyncIterator[tuple[int, EngineOutput]]:
    if len(streams) == 1:
        async with aclosing(streams[0]) as stream:
            async for out in stream:
                yield 0, out
        return
    queue: asyncio.Queue = asyncio.Queue()
    tasks = [asyncio.ensure_future(_pump(i, s, queue)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:            # a cancelled pump closes its stream: the engine cancels that request
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _pump(i: int, stream, queue: asyncio.Queue) -> None:
    try:
        async with aclosing(stream):
            async for out in stream:
                queue.put_nowait((i, out))
        queue.put_nowait((i, _END))
    except asyncio.CancelledError:
        raise
    except Exception as e:            # delivered to the reader, who raises it
        queue.put_nowait((i, e))

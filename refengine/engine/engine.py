"""The engine's public face: requests from any thread or event loop, one background thread stepping.

    caller (asyncio task / thread)              engine thread (the only one touching EngineCore)
    ───────────────────────────────             ───────────────────────────────────────────────
    stream_infer(...) ── command queue ──────►  add_request / cancel
          ▲                                     while work exists: step()  (the model runs here,
          └────────── per-request channel ◄──── outputs routed by session id    off the event loop)

`stream_infer` is an async generator of EngineOutput (text delta, token ids, logprobs when asked,
finish_reason, usage); `stream` and `infer` are the same for synchronous code (pipeline, chat CLI).
A request's mistakes (unknown or busy session, prompt too long for session_len, bad parameters) come back
as typed errors raised in that caller only. A caller that stops reading (breaks out, is cancelled)
cancels its request, which frees its blocks.

Sessions (LMDeploy's interactive mode): sequence_start=True opens `session_id`, sequence_end=False keeps
it after the turn, and a later call with sequence_start=False continues it — with input_ids (appended as
they are) or with the new messages (the engine renders the whole conversation and sends what the session
lacks; see chat_turns.py). end_session / cancel free it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from dataclasses import dataclass, replace
from typing import AsyncIterator, Callable, Hashable, Iterator

from refengine.config import EngineConfig
from refengine.engine.chat_turns import next_turn_ids
from refengine.engine.core import EngineCore
from refengine.engine.errors import UnknownSessionError
from refengine.engine.loop_inbox import Inboxes
from refengine.engine.request import EngineOutput
from refengine.errors import GenerationConfigError
from refengine.sampling_params import GenerationConfig

logger = logging.getLogger("refengine")

_STOP = object()     # the command that ends the engine thread


class EngineStepError(RuntimeError):
    """A step failed inside the engine (a bug): the requests in flight get this; new ones are served."""


@dataclass
class _Channel:
    """Where one request's outputs go: `put` is called on the engine thread."""
    put: Callable[[object], None]
    remaining: int                   # completions not finished yet


@dataclass
class _Turn:
    """A request as the caller prepared it: token ids to send and, for a chat, the whole conversation."""
    session_id: Hashable
    input_ids: list[int]
    sequence_start: bool
    conversation: list[dict] | None


class Engine:
    def __init__(self, model, tokenizer=None, config: EngineConfig = EngineConfig()):
        self.core = EngineCore.build(model, config, tokenizer)
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.session_len = self.core.session_len
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._channels: dict[Hashable, _Channel] = {}          # engine thread only
        self._conversations: dict[Hashable, list[dict]] = {}   # chat sessions: messages so far
        self._session_ids = itertools.count(1)
        self._inboxes = Inboxes()                              # outputs to callers' event loops
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    @classmethod
    def from_model(cls, model: str, backend: str = "auto", chat_template: str | None = None,
                   config: EngineConfig = EngineConfig()) -> "Engine":
        from refengine.model.llama import LlamaModel
        from refengine.model.loader import load_model
        from refengine.ops import get_backend
        loaded = load_model(model, chat_template=chat_template)
        return cls(LlamaModel(loaded.config, loaded.weights, get_backend(backend)), loaded.tokenizer, config)

    def new_session_id(self) -> Hashable:
        """A session id no caller has used (for stateless requests)."""
        while True:
            sid = ("auto", next(self._session_ids))
            if sid not in self.core.sessions:
                return sid

    # ---------------------------------------------------------------- async API

    async def stream_infer(self, session_id: Hashable, messages=None, gen_config: GenerationConfig | None = None,
                           sequence_start: bool = True, sequence_end: bool = True, *, input_ids=None,
                           n: int = 1, do_preprocess: bool = True,
                           merge_backlog: bool = False) -> AsyncIterator[EngineOutput]:
        """Yield outputs as they are generated, one per token (with n > 1, each output's `index` says whose).
        With merge_backlog, a caller that falls behind gets the tokens that piled up for a completion merged
        into one output, so a busy event loop (many streams, one per HTTP client) does its per-output work
        once per wake-up, not per token."""
        turn = self._prepare(session_id, messages, input_ids, sequence_start, do_preprocess)
        loop, outputs = asyncio.get_running_loop(), asyncio.Queue()
        self._submit(turn, gen_config, sequence_end, n, self._async_put(loop, outputs, session_id))
        state, held = _Reading(n), None
        try:
            while state.remaining:
                if held is None:
                    item = await outputs.get()
                else:
                    item, held = held, None
                output = state.take(item)
                while merge_backlog and output.finish_reason is None and not outputs.empty():   # a backlog
                    item = outputs.get_nowait()
                    if isinstance(item, BaseException) or item.index != output.index:
                        held = item                          # not mergeable: the next output
                        break
                    output = merge_outputs(output, state.take(item))
                yield output
        finally:
            self._after(turn, sequence_end, state)

    def _async_put(self, loop, outputs: asyncio.Queue, session_id) -> Callable[[object], None]:
        inbox = self._inboxes.for_loop(loop)

        def put(item):
            try:
                inbox.put(outputs, item)
            except RuntimeError:            # the caller's event loop is gone: nobody will read
                self._commands.put(lambda: self._deliver(self.core.cancel(session_id)))
        return put

    # ---------------------------------------------------------------- sync API

    def stream(self, session_id: Hashable | None = None, messages=None, gen_config: GenerationConfig | None = None,
               sequence_start: bool = True, sequence_end: bool = True, *, input_ids=None, n: int = 1,
               do_preprocess: bool = True) -> Iterator[EngineOutput]:
        """stream_infer for synchronous callers. The request is queued now, before the first next()."""
        session_id = self.new_session_id() if session_id is None else session_id
        turn = self._prepare(session_id, messages, input_ids, sequence_start, do_preprocess)
        outputs: queue.SimpleQueue = queue.SimpleQueue()
        self._submit(turn, gen_config, sequence_end, n, outputs.put)
        return self._read_sync(turn, sequence_end, outputs, _Reading(n))

    def _read_sync(self, turn: _Turn, sequence_end: bool, outputs, state) -> Iterator[EngineOutput]:
        try:
            while state.remaining:
                yield state.take(outputs.get())
        finally:
            self._after(turn, sequence_end, state)

    def infer(self, session_id: Hashable | None = None, messages=None, gen_config: GenerationConfig | None = None,
              sequence_start: bool = True, sequence_end: bool = True, *, input_ids=None, n: int = 1,
              do_preprocess: bool = True) -> list[EngineOutput]:
        """Run to completion: one merged output per completion (all text, ids and logprobs)."""
        merged: dict[int, EngineOutput] = {}
        for out in self.stream(session_id, messages, gen_config, sequence_start, sequence_end, input_ids=input_ids,
                               n=n, do_preprocess=do_preprocess):
            merged[out.index] = merge_outputs(merged.get(out.index), out)
        return [merged[i] for i in sorted(merged)]

    def cancel(self, session_id: Hashable) -> None:
        """Stop the session's running turn (its stream ends with finish_reason "abort") and free the session."""
        self._conversations.pop(session_id, None)
        self._command(lambda: self._deliver(self.core.cancel(session_id)))

    def end_session(self, session_id: Hashable) -> None:
        """The conversation is over: free the session's blocks and history."""
        self.cancel(session_id)

    def session_token_ids(self, session_id: Hashable) -> list[int] | None:
        return self.core.session_token_ids(session_id)

    def close(self) -> None:
        if self._thread is not None:
            self._commands.put(_STOP)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------- preparing a turn (caller's thread)

    def _prepare(self, session_id, messages, input_ids, sequence_start: bool, do_preprocess: bool) -> _Turn:
        if input_ids is not None:
            return _Turn(session_id, list(input_ids), sequence_start, None)
        if isinstance(messages, (list, tuple)) and messages and all(isinstance(t, int) for t in messages):
            return _Turn(session_id, list(messages), sequence_start, None)
        if messages is None or (not isinstance(messages, str) and not _is_messages(messages)):
            raise GenerationConfigError("messages", "give a str, a list of {role, content} dicts or input_ids")
        if self.tokenizer is None:
            raise GenerationConfigError("messages", "this engine has no tokenizer: give input_ids")
        if isinstance(messages, str) and not do_preprocess:
            return _Turn(session_id, self.tokenizer.encode(messages, add_special_tokens=sequence_start),
                         sequence_start, None)
        new = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
        if sequence_start:
            return _Turn(session_id, self.tokenizer.encode_chat(new), True, new)
        return self._continue_chat(session_id, self._conversations.get(session_id, []) + new)

    def _continue_chat(self, session_id, conversation: list[dict]) -> _Turn:
        held = self.core.session_token_ids(session_id)
        if held is None:
            raise UnknownSessionError(session_id, "no such session to continue (start it with sequence_start=True)")
        ids = next_turn_ids(self.tokenizer, held, conversation)
        if ids is not None:
            return _Turn(session_id, ids, False, conversation)
        logger.info("session %r: the conversation re-renders differently; re-sending it whole", session_id)
        return _Turn(session_id, self.tokenizer.encode_chat(conversation), True, conversation)

    def _after(self, turn: _Turn, sequence_end: bool, state: "_Reading") -> None:
        """The caller stopped reading: cancel an unfinished turn; remember a chat session's reply."""
        if state.failed:
            if isinstance(state.error, EngineStepError):
                self._conversations.pop(turn.session_id, None)
        elif state.remaining:
            self.cancel(turn.session_id)
        elif sequence_end or state.aborted or turn.conversation is None:
            self._conversations.pop(turn.session_id, None)
        else:
            self._conversations[turn.session_id] = turn.conversation + [
                {"role": "assistant", "content": state.text}]

    # ---------------------------------------------------------------- the engine thread

    def _submit(self, turn: _Turn, gen_config, sequence_end: bool, n: int, put) -> None:
        cfg = gen_config if gen_config is not None else GenerationConfig()
        channel = _Channel(put, n)
        self._command(lambda: self._add(channel, turn, cfg, sequence_end, n))

    def _command(self, fn: Callable[[], None]) -> None:
        self._ensure_thread()
        self._commands.put(fn)

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="refengine-engine", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        stalled = False
        while True:
            block = stalled or not self.core.has_work()    # sleep until a command arrives when idle
            for command in self._drain(block):
                if command is _STOP:
                    return
                self._run_command(command)
            steps, sampled = self.core.stats["steps"], False
            if self.core.has_work():
                sampled = self._step()
            # nothing could run (no step launched, no token from a step launched ahead): wait for a command
            stalled = self.core.has_work() and self.core.stats["steps"] == steps and not sampled

    def _run_command(self, command: Callable[[], None]) -> None:
        try:
            command()
        except Exception:              # a bug in a command must not stop the engine thread
            logger.exception("engine command failed")

    def _drain(self, block: bool) -> list:
        commands = [self._commands.get()] if block else []
        while True:
            try:
                commands.append(self._commands.get_nowait())
            except queue.Empty:
                return commands

    def _add(self, channel: _Channel, turn: _Turn, cfg, sequence_end: bool, n: int) -> None:
        try:
            outputs = self.core.add_request(turn.session_id, turn.input_ids, cfg, turn.sequence_start,
                                            sequence_end, n)
        except Exception as e:        # a bad request: only its caller hears of it
            channel.put(e)
            return
        self._channels[turn.session_id] = channel
        self._deliver(outputs)

    def _step(self) -> bool:
        """One core step; whether it gave any output."""
        try:
            outputs = self.core.step()
        except Exception as e:
            logger.exception("engine step failed; aborting the requests in flight")
            self.core.abort_all()
            for channel in self._channels.values():
                channel.put(EngineStepError(f"the engine step failed: {e!r}"))
            self._channels.clear()
            return False
        self._deliver(outputs)
        return bool(outputs)

    def _deliver(self, outputs: list[EngineOutput]) -> None:
        for out in outputs:
            channel = self._channels.get(out.session_id)
            if channel is None:
                continue
            channel.put(out)
            if out.finish_reason is not None:
                channel.remaining -= 1
                if not channel.remaining:
                    del self._channels[out.session_id]


class _Reading:
    """What a caller has read so far."""

    def __init__(self, n: int):
        self.remaining = n
        self.failed = False
        self.error: BaseException | None = None
        self.aborted = False
        self.text = ""                 # completion 0's text, for a chat session's history

    def take(self, item) -> EngineOutput:
        if isinstance(item, BaseException):
            self.failed, self.error = True, item
            raise item
        if item.finish_reason is not None:
            self.remaining -= 1
            self.aborted |= item.finish_reason == "abort"
        if item.index == 0:
            self.text += item.text
        return item


def merge_outputs(acc: EngineOutput | None, out: EngineOutput) -> EngineOutput:
    if acc is None:
        return replace(out, token_ids=list(out.token_ids), logprobs=list(out.logprobs))
    return replace(out, text=acc.text + out.text, token_ids=acc.token_ids + out.token_ids,
                   logprobs=acc.logprobs + out.logprobs)


def _is_messages(messages) -> bool:
    return isinstance(messages, (list, tuple)) and bool(messages) and all(isinstance(m, dict) for m in messages)

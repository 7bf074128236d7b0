"""OpenAI's response objects, built from engine outputs.

    chat, whole       {"id": "chatcmpl-…", "object": "chat.completion", "created", "model", "system_fingerprint",
                       "choices": [{"index", "message": {"role", "content"}, "logprobs", "finish_reason"}], "usage"}
    chat, streamed    "object": "chat.completion.chunk", choices[{"index", "delta", "logprobs", "finish_reason"}]
    completions       "object": "text_completion", choices[{"index", "text", "logprobs", "finish_reason"}]

With several prompts (completions) and n completions each, choice `index` = prompt × n + completion, as
OpenAI numbers them. Usage counts each prompt once and every completion's tokens.
Log-probabilities: chat uses {"content": [{"token", "logprob", "bytes", "top_logprobs"}]}, completions the
legacy {"tokens", "token_logprobs", "top_logprobs", "text_offset"}; a token's text is its own decoding
(a byte-level token that is part of a character decodes to U+FFFD, as other servers report it too).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from refengine.engine.request import EngineOutput
from refengine.engine.sampler import TokenChoice


@dataclass
class Choice:
    """One completion gathered so far."""
    text: str = ""
    logprobs: list[TokenChoice] = field(default_factory=list)
    finish_reason: str | None = None


class Tally:
    """Per-choice text and usage of a whole response (turn i, completion j → choice i × n + j)."""

    def __init__(self, num_turns: int, n: int):
        self.n = n
        self.choices = [Choice() for _ in range(num_turns * n)]
        self.prompt_tokens = [0] * num_turns
        self.completion_tokens = [0] * (num_turns * n)

    def index(self, turn: int, out: EngineOutput) -> int:
        return turn * self.n + out.index

    def add(self, turn: int, out: EngineOutput) -> int:
        i = self.index(turn, out)
        choice = self.choices[i]
        choice.text += out.text
        choice.logprobs += out.logprobs
        choice.finish_reason = out.finish_reason or choice.finish_reason
        self.prompt_tokens[turn] = out.usage.prompt_tokens
        self.completion_tokens[i] = out.usage.completion_tokens
        return i

    def usage(self) -> dict:
        prompt, completion = sum(self.prompt_tokens), sum(self.completion_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class Shape:
    """The fields every response and chunk of one request shares."""

    def __init__(self, chat: bool, model: str, token_text):
        self.chat = chat
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.token_text = token_text            # token id -> str
        # built once per request: every streamed chunk starts with the same fields
        self._chunk_head = self._head("chat.completion.chunk" if chat else "text_completion")

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def body(self, tally: Tally) -> dict:
        choices = [self._whole_choice(i, c) for i, c in enumerate(tally.choices)]
        return {**self._head("chat.completion" if self.chat else "text_completion"), "choices": choices,
                "usage": tally.usage()}

    def _whole_choice(self, i: int, c: Choice) -> dict:
        if self.chat:
            return {"index": i, "message": {"role": "assistant", "content": c.text},
                    "logprobs": self.logprobs(c.logprobs), "finish_reason": c.finish_reason}
        return {"index": i, "text": c.text, "logprobs": self.logprobs(c.logprobs), "finish_reason": c.finish_reason}

    def chunk(self, choices: list[dict], usage: dict | None = None, with_usage: bool = False) -> dict:
        obj = {**self._chunk_head, "choices": choices}
        if with_usage:
            obj["usage"] = usage
        return obj

    def delta(self, i: int, text: str, logprobs: list[TokenChoice], finish_reason: str | None,
              role: bool = False) -> dict:
        """One choice of a streamed chunk."""
        lp = self.logprobs(logprobs) if logprobs else None
        if not self.chat:
            return {"index": i, "text": text, "logprobs": lp, "finish_reason": finish_reason}
        delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
        return {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish_reason}

    def logprobs(self, choices: list[TokenChoice]) -> dict | None:
        if not choices:
            return None
        if self.chat:
            return {"content": [self._chat_entry(c) for c in choices]}
        return self._legacy(choices)

    def _token(self, token_id: int, logprob: float) -> dict:
        text = self.token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    def _chat_entry(self, c: TokenChoice) -> dict:
        return {**self._token(c.token_id, c.logprob),
                "top_logprobs": [self._token(t, lp) for t, lp in (c.top_logprobs or [])]}

    def _legacy(self, choices: list[TokenChoice]) -> dict:
        tokens = [self.token_text(c.token_id) for c in choices]
        offsets, at = [], 0
        for t in tokens:
            offsets.append(at)
            at += len(t)
        return {"tokens": tokens, "token_logprobs": [c.logprob for c in choices],
                "top_logprobs": [{self.token_text(t): lp for t, lp in (c.top_logprobs or [])} for c in choices],
                "text_offset": offsets}

"""Run one request at a time to completion: prefill in chunks, then decode token by token.

This is the simplest correct loop over the model (one sequence, its own KV blocks numbered 0..n-1).
The continuous-batching engine (scheduler + block manager) replaces it; both produce the same
`StepOutput`s, so the front ends do not care which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from refengine.engine.detokenizer import IncrementalDetokenizer
from refengine.engine.kv_cache import KVCache
from refengine.engine.sampler import TokenChoice, sample
from refengine.engine.stop_strings import StopStringMatcher
from refengine.errors import GenerationConfigError
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.model.tokenizer import Tokenizer
from refengine.sampling_params import GenerationConfig


@dataclass
class StepOutput:
    """What one generated token adds. `finish_reason` is set on the last one: "stop" or "length"."""
    text: str                                   # new text (may be "" while a character is incomplete)
    token_ids: list[int]                        # new token ids
    logprobs: list[TokenChoice] = field(default_factory=list)
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0                  # so far, this step included


class SingleRequestRunner:
    def __init__(self, model: LlamaModel, tokenizer: Tokenizer, session_len: int,
                 block_size: int = 64, prefill_chunk: int = 512):
        self.model = model
        self.tokenizer = tokenizer
        self.session_len = session_len
        self.block_size = block_size
        self.prefill_chunk = prefill_chunk

    def stop_ids(self, cfg: GenerationConfig) -> set[int]:
        eos = set() if cfg.ignore_eos else set(self.tokenizer.eos_token_ids)
        return eos | set(cfg.stop_token_ids)

    def prefill(self, ids: list[int], kv: KVCache, table: np.ndarray) -> np.ndarray:
        """Run the prompt through the model in chunks; return the last position's logits [V]."""
        for start in range(0, len(ids), self.prefill_chunk):
            batch = ForwardBatch.single(ids[start:start + self.prefill_chunk], start, table, self.block_size)
            logits = self.model.forward(batch, kv)
        return logits[-1]

    def run(self, prompt_ids: list[int], cfg: GenerationConfig) -> Iterator[StepOutput]:
        """Yield one StepOutput per generated token (the last carries finish_reason)."""
        if not prompt_ids:
            raise GenerationConfigError("prompt", "is empty")
        if len(prompt_ids) >= self.session_len:
            raise GenerationConfigError(
                "prompt", f"has {len(prompt_ids)} tokens, the session length is {self.session_len}")
        budget = min(cfg.max_new_tokens, self.session_len - len(prompt_ids))
        if budget == 0:
            yield StepOutput("", [], finish_reason="length", num_prompt_tokens=len(prompt_ids))
            return
        n_blocks = -(-(len(prompt_ids) + budget) // self.block_size)
        kv = KVCache.allocate(self.model.cfg, n_blocks, self.block_size, dtype=self.model.dtype)
        table = np.arange(n_blocks, dtype=np.int32)
        yield from self._decode(prompt_ids, cfg, budget, kv, table)

    def _decode(self, prompt_ids, cfg, budget, kv, table) -> Iterator[StepOutput]:
        rng = np.random.default_rng(cfg.seed)
        detok = IncrementalDetokenizer(self.tokenizer, prompt_ids, cfg.skip_special_tokens)
        stops = StopStringMatcher(cfg.stop)
        stop_ids, output = self.stop_ids(cfg), []
        logits = self.prefill(prompt_ids, kv, table)
        while True:
            choice = sample(logits, cfg, rng, prompt_ids, output)
            output.append(choice.token_id)
            hit_stop_id = choice.token_id in stop_ids
            text, hit_stop_str = stops.feed("" if hit_stop_id else detok.add(choice.token_id))
            finish = "stop" if (hit_stop_id or hit_stop_str) else "length" if len(output) >= budget else None
            if finish is not None and not hit_stop_str:
                text += stops.flush()
            logprobs = [choice] if cfg.logprobs is not None else []
            yield StepOutput(text, [choice.token_id], logprobs, finish, len(prompt_ids), len(output))
            if finish:
                return
            pos = len(prompt_ids) + len(output) - 1
            logits = self.model.forward(ForwardBatch.single([choice.token_id], pos, table, self.block_size), kv)[0]

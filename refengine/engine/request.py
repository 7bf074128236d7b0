"""The output side of one completion: its random generator, incremental detokenizer and stop strings,
and the rule that ends its turn. The scheduler never looks at this; it only sees the Sequence.

A turn ends with finish_reason
    "stop"    a stop token id (eos unless ignore_eos, or gen_config.stop_token_ids) or a stop string
              (matched on the detokenized text, of any token length, trimmed from the text);
    "length"  max_new_tokens generated, or the session reached session_len (then finish_detail says so);
    "abort"   cancelled, or the caller went away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable

import numpy as np

from refengine.engine.detokenizer import IncrementalDetokenizer
from refengine.engine.sampler import TokenChoice
from refengine.engine.sequence import Sequence
from refengine.engine.stop_strings import StopStringMatcher
from refengine.sampling_params import GenerationConfig


@dataclass
class Usage:
    prompt_tokens: int              # this turn's input tokens
    completion_tokens: int          # generated so far this turn
    history_tokens: int = 0         # tokens the session already held before this turn

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class EngineOutput:
    """One increment of one completion: usually one token; the last carries finish_reason."""
    session_id: Hashable
    text: str                                   # new text ("" while a character or a stop string is pending)
    token_ids: list[int]                        # new token ids
    finish_reason: str | None
    usage: Usage
    logprobs: list[TokenChoice] = field(default_factory=list)
    index: int = 0                              # which of the n completions
    finish_detail: str | None = None            # a sentence for the user when the reason needs one


class Request:
    def __init__(self, seq: Sequence, config: GenerationConfig, tokenizer, stop_token_ids, index: int = 0,
                 session_len: int | None = None, keep_session: bool = False):
        self.seq = seq
        self.config = config
        self.index = index
        self.session_len = session_len
        self.keep_session = keep_session        # sequence_end=False: park the blocks after the turn
        eos = () if config.ignore_eos else tuple(stop_token_ids)
        self.stop_ids = frozenset(eos + config.stop_token_ids)
        seed = config.seed if index == 0 or config.seed is None else (config.seed, index)
        self.rng = np.random.default_rng(seed)
        prompt = seq.token_ids[max(0, seq.num_prompt - 8):seq.num_prompt]   # the detokenizer's context
        self.detok = IncrementalDetokenizer(tokenizer, prompt, config.skip_special_tokens) if tokenizer else None
        self.stops = StopStringMatcher(config.stop)
        self._penalised = (config.repetition_penalty != 1.0 or config.presence_penalty != 0.0
                           or config.frequency_penalty != 0.0)

    def penalty_context(self) -> tuple[list[int], list[int]]:
        """(prompt ids, output ids) for the sampler's penalties; empty when no penalty is set."""
        if not self._penalised:
            return [], []
        return self.seq.token_ids[:self.seq.num_prompt], self.seq.output_ids

    def usage(self) -> Usage:
        s = self.seq
        return Usage(s.num_prompt - s.num_history, s.num_output, s.num_history)

    def on_token(self, choice: TokenChoice) -> EngineOutput:
        """Append the chosen token to the sequence; the output it gives, finished or not."""
        seq, token = self.seq, choice.token_id
        seq.append_token(token)
        hit_id = token in self.stop_ids
        text, hit_str = self.stops.feed(self._detokenize(token) if not hit_id else "")
        finish, detail = ("stop", None) if hit_id or hit_str else self._length_finish()
        if finish is not None and not hit_str:
            text += self._flush()
        logprobs = [choice] if self.config.logprobs is not None else []
        return EngineOutput(seq.session_id, text, [token], finish, self.usage(), logprobs, self.index, detail)

    def finish_now(self, reason: str, detail: str | None = None) -> EngineOutput:
        """A turn that ends without a new token: max_new_tokens=0, or aborted."""
        text = self._flush() if reason != "abort" else ""
        return EngineOutput(self.seq.session_id, text, [], reason, self.usage(), [], self.index, detail)

    def _length_finish(self) -> tuple[str | None, str | None]:
        seq = self.seq
        if seq.num_tokens < seq.max_tokens:
            return None, None
        if seq.num_output < self.config.max_new_tokens:
            return "length", f"the session reached its length limit (session_len = {self.session_len} tokens)"
        return "length", None

    def _detokenize(self, token: int) -> str:
        return self.detok.add(token) if self.detok else ""

    def _flush(self) -> str:
        held = self.detok.flush() if self.detok else ""
        text, hit = self.stops.feed(held)
        return text if hit else text + self.stops.flush()

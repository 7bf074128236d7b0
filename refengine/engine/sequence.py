"""A Sequence: one stream of tokens with its KV blocks, seen by the scheduler through three counters.

    token_ids   | history (earlier turns) | this turn's input | generated this turn |
                0                     num_history          num_prompt          num_tokens
    KV cache    | computed: K/V in the blocks              | not yet |
                0                                 num_computed

One step lets `num_computed` catch up with `num_tokens` (all at once, or by chunks of a long prompt);
when it has caught up, the last position's logits give the next token and `num_tokens` grows by one.
Prefill, chunked prefill, a session's next turn, recompute after preemption and decode are this one rule.

A session (LMDeploy's interactive mode) is one Sequence that lives across turns: between turns it is
IDLE and keeps its blocks (until evicted for memory), and its next turn appends input to `token_ids`.
"""

from __future__ import annotations

import enum
from typing import Hashable


class SequenceStatus(enum.Enum):
    WAITING = "waiting"       # queued for blocks: new, preempted, or a session's next turn
    RUNNING = "running"       # holds blocks for all its tokens; scheduled every step until its turn ends
    IDLE = "idle"             # a session between turns (its blocks kept until evicted)
    FINISHED = "finished"     # done, blocks freed


class Sequence:
    def __init__(self, seq_id: int, session_id: Hashable, token_ids: list[int], arrival: int):
        self.seq_id = seq_id
        self.session_id = session_id
        self.token_ids = list(token_ids)
        self.num_history = 0                  # tokens held before this turn
        self.num_prompt = len(self.token_ids)  # history + this turn's input
        self.num_computed = 0                 # tokens whose K/V are in the cache
        self.max_tokens = self.num_prompt     # this turn ends when num_tokens reaches it
        self.block_table: list[int] = []      # KV block ids, in token order
        self.block_hashes: list[int] = []     # prefix-cache chain hash of each full block of token_ids
        self.num_sealed = 0                   # leading blocks whose contents the block manager has hashed
        self.status = SequenceStatus.WAITING
        self.arrival = arrival                # when this turn was requested: the newest is preempted first
        self.num_forks = 0                    # extra completions to split off at the first sample (n - 1)

    def __repr__(self) -> str:
        return (f"Sequence({self.seq_id}, session={self.session_id!r}, {self.status.value}, "
                f"tokens={self.num_tokens}, computed={self.num_computed}, blocks={self.block_table})")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output(self) -> int:
        return self.num_tokens - self.num_prompt

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt:]

    def start_turn(self, input_ids: list[int], max_new_tokens: int, session_len: int, arrival: int) -> None:
        """Append a turn's input; the turn may generate up to max_new_tokens (and never past session_len)."""
        self.num_history = self.num_tokens
        self.token_ids.extend(input_ids)
        self.num_prompt = self.num_tokens
        self.max_tokens = min(self.num_prompt + max_new_tokens, session_len)
        self.arrival = arrival
        self.status = SequenceStatus.WAITING

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def fork(self, seq_id: int) -> "Sequence":
        """A sibling completion sharing everything so far (the block manager shares the blocks)."""
        child = Sequence(seq_id, self.session_id, self.token_ids, self.arrival)
        for name in ("num_history", "num_prompt", "num_computed", "max_tokens", "num_sealed", "status"):
            setattr(child, name, getattr(self, name))
        child.block_table = list(self.block_table)
        child.block_hashes = list(self.block_hashes)
        return child

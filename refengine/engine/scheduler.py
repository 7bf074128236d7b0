"""The scheduler: which sequences run in the next step, and how many tokens each computes.

Continuous batching by counters. Every step each scheduled sequence computes tokens
[num_computed, num_computed + n): a decode step is n = 1, a prompt is computed in chunks of at most
`max_prefill_token_num` tokens per step (shared by all sequences), and requests join and leave the
batch between any two steps. One step, in order:

  1. running sequences, oldest first: each gets its next chunk (or its one decode token) and room
     in the KV cache for it. No room: evict a parked sequence (least recently used first), else
     preempt the newest running sequence: its blocks are freed, its tokens kept, and it goes to the
     front of the waiting queue to be recomputed later.
  2. waiting sequences, first come first served, if nothing was preempted: the head must get blocks
     for all its tokens (evicting idle sessions if needed) or nobody behind it is admitted — so no
     request starves under a steady stream of new ones.

"Parked" sequences hold KV blocks without running: idle sessions between turns, and a session's new
turn waiting to be admitted. They are kept in least-recently-used order and are the first to give
their blocks back (keeping their token ids: they are re-prefilled when they run again).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from refengine.config import SchedulerConfig
from refengine.engine.block_manager import BlockManager
from refengine.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSequence:
    seq: Sequence
    num_new_tokens: int             # computes tokens [num_computed, num_computed + num_new_tokens)

    @property
    def samples(self) -> bool:
        """Whether this step catches the sequence up, so its last position's logits pick a token."""
        return self.seq.num_computed + self.num_new_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)     # blocks freed, back to the waiting queue
    evicted: list[Sequence] = field(default_factory=list)       # parked sessions whose blocks were freed
    copies: list[tuple[int, int]] = field(default_factory=list)  # (src, dst) blocks to copy first

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []           # sorted by arrival: oldest first
        self.parked: OrderedDict[int, Sequence] = OrderedDict()   # seq_id -> seq holding blocks; LRU first

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---------------------------------------------------------------- queue changes

    def add(self, seq: Sequence) -> None:
        """A new sequence, or a session's next turn (it keeps its blocks while it waits)."""
        seq.status = SequenceStatus.WAITING
        if seq.block_table:
            self.parked[seq.seq_id] = seq
            self.parked.move_to_end(seq.seq_id)
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """A forked completion: it already holds (shared) blocks and runs from the next step."""
        seq.status = SequenceStatus.RUNNING
        self._insert_running(seq)

    def finish(self, seq: Sequence, keep: bool) -> None:
        """The turn is over: keep=True parks the session's blocks for its next turn, else frees them."""
        self.running.remove(seq)
        if keep:
            seq.status = SequenceStatus.IDLE
            self.parked[seq.seq_id] = seq
        else:
            self.blocks.free(seq)
            seq.status = SequenceStatus.FINISHED

    def remove(self, seq: Sequence) -> None:
        """Cancel or end: drop the sequence wherever it is and free its blocks."""
        if seq.status is SequenceStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SequenceStatus.WAITING:
            self.waiting.remove(seq)
        self.parked.pop(seq.seq_id, None)
        self.blocks.free(seq)
        seq.status = SequenceStatus.FINISHED

    # ---------------------------------------------------------------- one step

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.config.max_prefill_token_num)
        if not out.preempted:
            self._schedule_waiting(out, budget)
        return self._with_copies(out)

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        i = 0
        while i < len(self.running) and budget and len(out.scheduled) < self.config.max_batch_size:
            seq = self.running[i]
            while not self.blocks.can_append(seq):
                if not self._make_room(out, seq):
                    return budget                    # seq itself was the newest: preempted
            self.blocks.append_slot(seq)
            n = min(seq.num_tokens - seq.num_computed, budget)
            out.scheduled.append(ScheduledSequence(seq, n))
            budget -= n
            i += 1
        return budget

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        limit = self.config.max_batch_size
        while self.waiting and budget and len(out.scheduled) < limit:
            seq = self.waiting[0]
            if self.running and len(self.running) + 1 + seq.num_forks > limit:
                return                               # its n completions would not fit the batch
            while not self.blocks.can_allocate(seq):
                if not self._evict_parked(out, keep=seq):
                    return                           # FCFS: nobody overtakes the head
            self.waiting.popleft()
            self.parked.pop(seq.seq_id, None)
            self.blocks.allocate(seq)
            seq.status = SequenceStatus.RUNNING
            self._insert_running(seq)
            n = min(seq.num_tokens - seq.num_computed, budget)
            out.scheduled.append(ScheduledSequence(seq, n))
            budget -= n

    def schedule_ahead(self, seqs: list[Sequence]) -> SchedulerOutput | None:
        """The step after the current one, planned before the current one's tokens are known (lookahead decode,
        see core.py): one decode token for each of `seqs` — running sequences whose next token is already
        appended as a placeholder. None when that step could be anything else: someone is waiting, the batch or
        token budget is exceeded, or the cache has no room without evicting or preempting."""
        cfg = self.config
        if self.waiting or not seqs or len(seqs) > min(cfg.max_batch_size, cfg.max_prefill_token_num):
            return None
        if any(s.num_tokens - s.num_computed != 1 for s in seqs):
            return None
        if sum(self.blocks.blocks_needed(s) for s in seqs) > self.blocks.num_free_blocks:
            return None
        for seq in seqs:
            self.blocks.append_slot(seq)
        return self._with_copies(SchedulerOutput([ScheduledSequence(seq, 1) for seq in seqs]))

    def _with_copies(self, out: SchedulerOutput) -> SchedulerOutput:
        """The block copies (copy-on-write) this step's slots queued, handed to the step."""
        out.copies, self.blocks.pending_copies = self.blocks.pending_copies, []
        return out

    # ---------------------------------------------------------------- making room

    def _make_room(self, out: SchedulerOutput, seq: Sequence) -> bool:
        """Free blocks for running `seq`: a parked sequence's, else the newest running one's.
        False when the newest running sequence is `seq` itself (now preempted)."""
        if self._evict_parked(out, keep=seq):
            return True
        victim = max(reversed(self.running), key=lambda s: s.arrival)   # newest; ties: the last
        self._preempt(out, victim)
        return victim is not seq

    def _evict_parked(self, out: SchedulerOutput, keep: Sequence) -> bool:
        for seq_id, seq in self.parked.items():      # least recently used first
            if seq is not keep:
                del self.parked[seq_id]
                self.blocks.free(seq)
                out.evicted.append(seq)
                return True
        return False

    def _preempt(self, out: SchedulerOutput, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        out.preempted.append(seq)

    def _insert_running(self, seq: Sequence) -> None:
        bisect.insort_right(self.running, seq, key=lambda s: s.arrival)

"""The engine core: synchronous and single-threaded. add_request / cancel change what is queued;
step() runs one scheduled batch through the model and returns what each completion gained.

    add_request ──► Scheduler.add ──► step(): schedule ─► ModelRunner.run ─► counters catch up
                                              ▲                                    │
                                              └──── Request.on_token (sample) ◄────┘ (sequences that caught up)

Sessions: `sessions[session_id]` is the session's Sequence (plus, for a request with n > 1, its
sibling completions). sequence_start=True begins a session (restarting an idle one of that id);
sequence_start=False continues one, whose history is already in the cache unless it was evicted;
sequence_end=True frees it when the turn ends. Errors in a request are raised before anything changes.

Lookahead decode (with CUDA graphs): the GPU should never wait for the host. After step n's graph and sampler
are queued, step n+1 — every running sequence decoding one more token — is planned with a placeholder for
the token not yet known and queued too, its input ids gathered on the device from sampler n's output. Only
then does the host wait for step n's tokens and do its bookkeeping (stop checks, detokenizing, outputs),
while the GPU runs step n+1:

    host    launch n ─ sample n ─ plan+launch n+1 ─ wait ids n ─ bookkeeping n ─┐ sample n+1 ─ plan+launch n+2 ─ ...
    GPU          ├── graph n ──── argmax n ─┬─ graph n+1 ─────────────────────┴── argmax n+1 ─┬─ graph n+2 ─ ...
                                            └─ ids n to the host

A sequence that finishes (or is cancelled) at step n still has its row in step n+1: the row is dropped when
step n+1 completes (its counters do not move; the K/V it wrote is that of its real last token, or lands in a
block that is free again, before any later step can use it). Step n+1 is planned only when it is certain to
be pure decode: nobody waiting, the batch and token budgets kept, room in the cache without evicting or
preempting, and a graph to hold it; otherwise the next step is scheduled as usual once the tokens are known.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from typing import Hashable, Sequence as Seq

from refengine.config import EngineConfig
from refengine.engine.block_manager import BlockManager, num_kv_blocks
from refengine.engine.errors import (EngineConfigError, SessionBusyError, SessionLengthError,
                                     UnknownSessionError)
from refengine.engine.kv_cache import KVCache
from refengine.engine.model_runner import ModelRunner
from refengine.engine.request import EngineOutput, Request
from refengine.engine.sampler import SampledTokens, start_sampling
from refengine.engine.scheduler import ScheduledSequence, Scheduler, SchedulerOutput
from refengine.engine.sequence import Sequence, SequenceStatus
from refengine.errors import GenerationConfigError
from refengine.sampling_params import GenerationConfig

logger = logging.getLogger("refengine")

BUSY = (SequenceStatus.WAITING, SequenceStatus.RUNNING)
PENDING = -1        # the placeholder of a token still on the device (never seen outside step())


@dataclass
class _Ahead:
    """A step launched before the tokens of the step before it were known (lookahead decode)."""
    out: SchedulerOutput
    logits: object


def resolve_session_len(requested: int | None, model_max: int, capacity: int) -> int:
    """The session length: as asked (it must fit the KV cache), else the model's context clamped to it."""
    if requested is not None:
        if requested > capacity:
            raise EngineConfigError(f"session_len {requested} does not fit the KV cache ({capacity} tokens): "
                                    f"raise cache_max_entry_count or lower session_len")
        return requested
    if model_max > capacity:
        logger.warning("session_len lowered from the model's %d to the KV cache's %d tokens", model_max, capacity)
    if min(model_max, capacity) < 2:
        raise EngineConfigError(f"the KV cache holds {capacity} tokens: too small for any session")
    return min(model_max, capacity)


class EngineCore:
    def __init__(self, runner, scheduler: Scheduler, session_len: int, vocab_size: int, tokenizer=None,
                 stop_token_ids: Seq[int] = (), lookahead: bool = False):
        self.runner = runner
        self.lookahead = lookahead              # plan and launch step n+1 before step n's tokens are read
        self._ahead: _Ahead | None = None
        self.scheduler = scheduler
        self.block_manager = scheduler.blocks
        self.session_len = session_len
        self.vocab_size = vocab_size
        self.tokenizer = tokenizer
        self.stop_token_ids = tuple(stop_token_ids)
        self.sessions: dict[Hashable, list[Sequence]] = {}
        self.requests: dict[int, Request] = {}        # seq_id -> its completion's output side
        self._seq_ids = itertools.count()
        self._arrivals = itertools.count()
        self.stats = dict(steps=0, tokens=0, preempted=0, evicted=0, ahead=0)    # ahead: steps launched ahead

    @classmethod
    def build(cls, model, config: EngineConfig = EngineConfig(), tokenizer=None) -> "EngineCore":
        """Size the KV cache (cache_max_entry_count), then the block manager, scheduler and runner."""
        cache, bs = config.cache_config(), config.cache_block_seq_len
        # a tensor-parallel model's rank holds only its KV heads: its blocks are smaller than model.cfg's
        per_block = model.kv_bytes_per_block(bs) if hasattr(model, "kv_bytes_per_block") \
            else KVCache.bytes_per_block(model.cfg, bs, model.dtype.itemsize)
        num_blocks = num_kv_blocks(cache.cache_max_entry_count, per_block, xp=model.ops.xp)
        session_len = resolve_session_len(config.session_len, model.cfg.max_position_embeddings, num_blocks * bs)
        blocks = BlockManager(num_blocks, bs, cache.enable_prefix_caching)
        scheduler = Scheduler(config.scheduler_config(session_len), blocks)
        stop_ids = tokenizer.stop_token_ids if tokenizer is not None else ()
        runner = ModelRunner(model, num_blocks, bs)
        return cls(runner, scheduler, session_len, model.cfg.vocab_size, tokenizer, stop_ids,
                   lookahead=config.lookahead and runner.graphs is not None)

    # ---------------------------------------------------------------- requests

    def add_request(self, session_id: Hashable, input_ids: Seq[int], gen_config: GenerationConfig,
                    sequence_start: bool = True, sequence_end: bool = True, n: int = 1) -> list[EngineOutput]:
        """Queue one turn. Returns outputs at once only for a turn that generates nothing (max_new_tokens=0)."""
        input_ids = self._check_request(input_ids, gen_config, sequence_start, sequence_end, n)
        seq = self._session_for_turn(session_id, input_ids, sequence_start)
        seq.start_turn(input_ids, gen_config.max_new_tokens, self.session_len, next(self._arrivals))
        seq.num_forks = n - 1
        request = Request(seq, gen_config, self.tokenizer, self.stop_token_ids, 0, self.session_len,
                          keep_session=not sequence_end)
        if gen_config.max_new_tokens == 0:
            return self._unforked(request, self._end_turn(request, request.finish_now("length")))
        self.requests[seq.seq_id] = request
        self.scheduler.add(seq)
        return []

    def _check_request(self, input_ids, cfg, sequence_start, sequence_end, n) -> list[int]:
        if not isinstance(cfg, GenerationConfig):
            raise GenerationConfigError("gen_config", f"must be a GenerationConfig, got {type(cfg).__name__}")
        if not isinstance(n, int) or n < 1:
            raise GenerationConfigError("n", f"must be an integer >= 1, got {n!r}")
        if n > 1 and not (sequence_start and sequence_end):
            raise GenerationConfigError("n", "n > 1 needs a stateless request (sequence_start and sequence_end)")
        if cfg.stop and self.tokenizer is None:
            raise GenerationConfigError("stop", "stop strings need a tokenizer")
        ids = [int(t) for t in input_ids]
        if sequence_start and not ids:
            raise GenerationConfigError("prompt", "is empty")
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise GenerationConfigError("prompt", f"token id {bad[0]} is outside the vocabulary")
        return ids

    def _session_for_turn(self, session_id, input_ids: list[int], sequence_start: bool) -> Sequence:
        """The session's sequence, ready for a new turn (checked: not busy, fits session_len)."""
        group = self.sessions.get(session_id)
        if group is not None and any(s.status in BUSY for s in group):
            raise SessionBusyError(session_id, "its previous request is still running (wait for it or cancel it)")
        if group is None and not sequence_start:
            raise UnknownSessionError(session_id, "no such session to continue (start it with sequence_start=True)")
        history = 0 if sequence_start else group[0].num_tokens
        if history + len(input_ids) >= self.session_len:
            what = f"the prompt has {len(input_ids)} tokens" + (f" after {history} in the session" if history else "")
            raise SessionLengthError(session_id, f"{what}; the session length is {self.session_len} tokens")
        if not sequence_start:
            return group[0]
        if group is not None:
            self._drop_session(session_id)          # restart: the old conversation is gone
        seq = Sequence(next(self._seq_ids), session_id, [], 0)
        self.sessions[session_id] = [seq]
        return seq

    def cancel(self, session_id: Hashable) -> list[EngineOutput]:
        """Stop the session's turn (if one runs: a last output with finish_reason "abort") and free it all."""
        group = self.sessions.get(session_id, [])
        outputs = [out for s in group if s.seq_id in self.requests
                   for out in self._unforked(self.requests[s.seq_id], self.requests[s.seq_id].finish_now("abort"))]
        self._drop_session(session_id)
        return outputs

    end_session = cancel

    def abort_all(self) -> list[EngineOutput]:
        self._ahead = None                      # its rows all belong to sessions dropped here
        return [out for sid in list(self.sessions) for out in self.cancel(sid)]

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def session_token_ids(self, session_id: Hashable) -> list[int] | None:
        group = self.sessions.get(session_id)
        return list(group[0].token_ids) if group else None

    # ---------------------------------------------------------------- one step

    def step(self) -> list[EngineOutput]:
        if self._ahead is not None:
            outputs = self._complete_ahead()
            if outputs is not None:
                return outputs
        out = self.scheduler.schedule()
        self.stats["preempted"] += len(out.preempted)
        self.stats["evicted"] += len(out.evicted)
        if out.is_empty:
            return []
        logits = self.runner.run(out)                          # [R, V]: one row per sampling sequence
        self._count(out)
        requests, rows = [], []                 # who samples this step, and from which row of logits
        row = 0
        for s in out.scheduled:
            s_samples = s.samples
            self._computed(s)
            if s_samples:
                siblings = self._with_forks(s.seq)           # n > 1: the completions share this row
                requests += [self.requests[c.seq_id] for c in siblings]
                rows += [row] * len(siblings)
                row += 1
        return self._sample(logits, requests, rows)

    def _complete_ahead(self) -> list[EngineOutput] | None:
        """Step n+1, launched during step n: sample the rows of the sequences still running (None if none is)."""
        ahead, self._ahead = self._ahead, None
        requests, rows = [], []
        for row, s in enumerate(ahead.out.scheduled):       # every row samples (pure decode)
            if s.seq.status is SequenceStatus.RUNNING and s.seq.seq_id in self.requests:
                self._computed(s)
                requests.append(self.requests[s.seq.seq_id])
                rows.append(row)
        return self._sample(ahead.logits, requests, rows) if requests else None

    def _count(self, out: SchedulerOutput) -> None:
        self.stats["steps"] += 1
        self.stats["tokens"] += out.num_tokens

    def _computed(self, s: ScheduledSequence) -> None:
        s.seq.num_computed += s.num_new_tokens
        self.block_manager.seal_computed_blocks(s.seq)

    def _with_forks(self, seq: Sequence) -> list[Sequence]:
        siblings = [seq] + [self._fork(seq, i) for i in range(1, seq.num_forks + 1)]
        seq.num_forks = 0
        return siblings

    def _sample(self, logits, requests: list[Request], rows: list[int]) -> list[EngineOutput]:
        """One token for every request, all rows at once (one device->host copy on a GPU), then each
        request's bookkeeping in order. With lookahead, the next step is launched before the copy is awaited."""
        sampled = start_sampling(logits, rows, [r.config for r in requests], [r.rng for r in requests],
                                 [r.penalty_context() for r in requests])
        ahead = self._launch_ahead(requests, sampled) if self.lookahead else []
        choices = sampled.read()
        for seq in ahead:
            seq.token_ids.pop()                               # the placeholder: on_token appends the real token
        outputs = []
        for request, choice in zip(requests, choices):
            output = request.on_token(choice)
            if output.finish_reason is not None:
                self._end_turn(request, output)
            outputs.append(output)
        return outputs

    def _launch_ahead(self, requests: list[Request], sampled: SampledTokens) -> list[Sequence]:
        """Plan and launch the next step as pure decode of every running sequence, its input ids taken on the
        device from `sampled`. Returns the sequences given a placeholder token (none if nothing was launched)."""
        if len(requests) != len(self.scheduler.running):      # someone running did not sample: not pure decode
            return []
        # a sequence whose token now reaches max_tokens certainly ends: it gets no row
        going = [(i, r.seq) for i, r in enumerate(requests) if r.seq.num_tokens + 1 < r.seq.max_tokens]
        if not going or not self.runner.can_run_ahead(len(going)):
            return []
        seqs = [seq for _, seq in going]
        for seq in seqs:
            seq.append_token(PENDING)
        out = self.scheduler.schedule_ahead(seqs)
        if out is None:
            for seq in seqs:
                seq.token_ids.pop()
            return []
        logits = self.runner.run_ahead(out, sampled.ids, [i for i, _ in going])
        self._count(out)
        self.stats["ahead"] += 1
        self._ahead = _Ahead(out, logits)
        return seqs
    def _fork(self, seq: Sequence, index: int) -> Sequence:
        """Completion `index` of an n > 1 request: shares every block computed so far."""
        child = seq.fork(next(self._seq_ids))
        child.num_forks = 0
        self.block_manager.fork(child)
        parent = self.requests[seq.seq_id]
        self.requests[child.seq_id] = Request(child, parent.config, self.tokenizer, self.stop_token_ids, index,
                                              self.session_len)
        self.sessions[seq.session_id].append(child)
        self.scheduler.add_running(child)
        return child

    def _end_turn(self, request: Request, output: EngineOutput) -> EngineOutput:
        seq = request.seq
        self.requests.pop(seq.seq_id, None)
        if seq.status is SequenceStatus.RUNNING:
            self.scheduler.finish(seq, keep=request.keep_session)
        else:
            seq.status = SequenceStatus.IDLE                  # max_new_tokens=0: the turn never queued
        if not request.keep_session:
            self.scheduler.remove(seq)
            group = self.sessions.get(seq.session_id, [])
            if seq in group:
                group.remove(seq)
            if not group:
                self.sessions.pop(seq.session_id, None)
        return output

    @staticmethod
    def _unforked(request: Request, output: EngineOutput) -> list[EngineOutput]:
        """A turn that ends before its first sample ends its n - 1 unborn siblings too."""
        return [output] + [replace(output, index=i) for i in range(1, request.seq.num_forks + 1)]

    def _drop_session(self, session_id: Hashable) -> None:
        for seq in self.sessions.pop(session_id, []):
            self.requests.pop(seq.seq_id, None)
            self.scheduler.remove(seq)

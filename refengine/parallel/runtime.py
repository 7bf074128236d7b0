"""Rank 0 of a tensor-parallel model: the engine process's own model, driving tp − 1 worker processes.

    engine process (rank 0, GPU 0)                        worker r (GPU r), worker.py
    ──────────────────────────────                        ───────────────────────────
    Scheduler → ModelRunner.run(step)
      copy_kv_blocks ── COPY ──────────────── pipe ──►    copy the same blocks in its cache
      forward(batch) ── FORWARD (messages.py) ─ pipe ──►  forward(batch) on its shard
        its shard: … o ⇄ all_reduce ⇄ … down ⇄ all_reduce ⇄ … logits ⇄ gather   (NCCL, every rank)
      logits [R, V] → Sampler                              (its logits are dropped)

Step inputs travel over a pipe, not NCCL: they are host data that a worker needs on the host anyway (the
rope plan and the kernels' launch sizes read them), a worker waiting for the next step sleeps in the
kernel instead of spinning inside an NCCL kernel, and a rank 0 that dies closes the pipe (the worker sees
end-of-file) instead of leaving the worker in a collective forever. The collectives (the all-reduce after o
and after down, the vocabulary gather) run through NCCL on the GPU — or through pipes (host_comm.py) when
the ranks are CPU processes (--backend numpy).

The object quacks like a LlamaModel for the engine (cfg, ops, dtype, forward) and brings its own KV cache
handling (allocate_kv / copy_kv_blocks, which ModelRunner uses), so the scheduler, sampler and front ends
are unchanged. Steps run eagerly: decode steps are not captured as CUDA graphs under tensor parallelism.
"""

from __future__ import annotations

import multiprocessing
import os
import weakref
from dataclasses import dataclass

import numpy as np

from refengine.engine.kv_cache import KVCache
from refengine.model.llama import ForwardBatch, LlamaModel
from refengine.model.weights import ModelWeights
from refengine.parallel import messages
from refengine.parallel.plan import TensorParallelError, TPPlan
from refengine.parallel.shard import shard_weights
from refengine.parallel.worker import WorkerArgs, worker_main

POLL_S = 0.5          # how often rank 0 checks that a loading worker is still alive
STOP_WAIT_S = 10.0    # how long a stopping worker may take before it is terminated


@dataclass
class Worker:
    rank: int
    process: multiprocessing.Process
    control: object                 # rank 0's end of the message pipe
    data: object | None             # rank 0's end of the collective pipe (CPU ranks only)


def start_workers(spec: str, tp: int, backend: str, dtype: np.dtype, unique_id, env: dict) -> list[Worker]:
    ctx = multiprocessing.get_context("spawn")     # a fresh interpreter: no CUDA context inherited by fork
    workers = []
    for rank in range(1, tp):
        control, child_control = ctx.Pipe()
        data, child_data = ctx.Pipe() if backend == "numpy" else (None, None)
        args = WorkerArgs(rank, tp, spec, backend, dtype.name, unique_id, tuple(env.items()))
        process = ctx.Process(target=worker_main, args=(args, child_control, child_data), daemon=True,
                              name=f"refengine-tp-rank-{rank}")
        process.start()
        child_control.close()                       # only the worker holds these now: its exit closes the pipe
        if child_data is not None:
            child_data.close()
        workers.append(Worker(rank, process, control, data))
    return workers


def _exited(w: Worker, tp: int) -> TensorParallelError:
    w.process.join(POLL_S)
    return TensorParallelError(f"--tp {tp}: rank {w.rank} exited (code {w.process.exitcode}) while loading the "
                               f"model; its traceback is above (a script that starts tensor-parallel ranks needs "
                               f"`if __name__ == '__main__':`, as multiprocessing's spawn does)")


def wait_ready(workers: list[Worker], tp: int) -> None:
    """Wait for every worker to have loaded its shard; a failure becomes one line naming --tp and the rank."""
    for w in workers:
        while not w.control.poll(POLL_S):
            if not w.process.is_alive():
                raise _exited(w, tp)
        try:
            status, detail = w.control.recv()
        except EOFError:
            raise _exited(w, tp) from None
        if status != "ready":
            raise TensorParallelError(f"--tp {tp}: rank {w.rank} could not load the model: {detail}")


def stop_workers(workers: list[Worker]) -> None:
    """STOP every worker, wait for it, terminate the ones that do not leave (e.g. stuck in a collective)."""
    for w in workers:
        try:
            w.control.send_bytes(messages.pack_stop())
        except OSError:                             # already gone: nothing to stop
            pass
    for w in workers:
        w.process.join(STOP_WAIT_S)
        if w.process.is_alive():
            w.process.terminate()
            w.process.join(STOP_WAIT_S)
        for conn in (w.control, w.data):
            if conn is not None:
                conn.close()


class TensorParallelModel:
    """`weights` split over plan.tp ranks: rank 0 here, ranks 1.. in worker processes that load `spec` themselves.
    plan: the checked split of these weights (check_tp's result, as build_model passes it).
    ops: the CUDA backend (one GPU per rank, NCCL) or the NumPy reference (CPU ranks, pipes)."""

    def __init__(self, spec: str, plan: TPPlan, weights: ModelWeights, ops, dtype=None):
        self.plan, self.cfg, self.ops, self.tp = plan, plan.cfg, ops, plan.tp
        self.dtype = np.dtype(dtype if dtype is not None else ops.DEFAULT_DTYPE)
        gpu = ops.xp is not np
        env, unique_id = {}, None
        if gpu:
            from refengine.parallel.nccl import NCCL_ENV, new_unique_id
            env = dict(NCCL_ENV)
            os.environ.update(env)                  # rank 0 is an NCCL rank too: set before its first NCCL call
            unique_id = new_unique_id()
        self.workers = start_workers(spec, self.tp, "cupy" if gpu else "numpy", self.dtype, unique_id, env)
        self._finalizer = weakref.finalize(self, stop_workers, self.workers)
        try:
            self.local = LlamaModel(self.plan.local_config(), shard_weights(weights, self.plan, 0), ops, self.dtype)
            wait_ready(self.workers, self.tp)
            self.local.comm = self._join_comm(gpu, unique_id)
        except BaseException:
            self.close()
            raise

    def _join_comm(self, gpu: bool, unique_id):
        if gpu:
            from refengine.parallel.nccl import NcclComm
            return NcclComm(self.tp, unique_id, 0, self.cfg.vocab_size)
        from refengine.parallel.host_comm import HostComm
        return HostComm(0, [w.data for w in self.workers], self.cfg.vocab_size)

    # ---------------------------------------------------------------- what ModelRunner calls

    def kv_bytes_per_block(self, block_size: int) -> int:
        """KV bytes of one block on one rank (each GPU holds only its KV heads)."""
        return KVCache.bytes_per_block(self.local.cfg, block_size, self.dtype.itemsize)

    def allocate_kv(self, num_blocks: int, block_size: int) -> KVCache:
        self._broadcast(messages.pack_allocate(num_blocks, block_size))
        return KVCache.allocate(self.local.cfg, num_blocks, block_size, dtype=self.dtype, xp=self.ops.xp)

    def copy_kv_blocks(self, kv: KVCache, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        self._broadcast(messages.pack_copy(copies))
        src, dst = zip(*copies)
        self.ops.copy_blocks(kv.k_caches, kv.v_caches, src, dst)

    def forward(self, batch: ForwardBatch, kv: KVCache, hidden_states: list | None = None):
        """Logits [R, V] float32 of the whole model (rank 0's shard and the gather give them all)."""
        self._broadcast(messages.pack_forward(batch))
        return self.local.forward(batch, kv, hidden_states)

    def close(self) -> None:
        """Stop the workers (also done when this object is collected, or at exit)."""
        self._finalizer()

    def _broadcast(self, buf: bytes) -> None:
        for w in self.workers:
            try:
                w.control.send_bytes(buf)
            except OSError as e:
                raise RuntimeError(f"tensor-parallel rank {w.rank} is gone (exit code {w.process.exitcode})") from e

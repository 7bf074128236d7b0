"""A tensor-parallel worker: ranks 1..tp-1, each a process of its own (multiprocessing, spawn context).

    start        env (NCCL_NVLS_ENABLE=0) → its GPU (device = rank) → load the model → keep its shard
                 → "ready" to rank 0 → join the communicator (NCCL, or pipes for CPU ranks)
    serve        loop: read a message from rank 0's pipe (messages.py) and do it —
                 ALLOCATE its KV cache · COPY blocks · FORWARD its shard (collectives inside) · STOP

A worker loads the model from the same spec as rank 0 (a workspace is memory-mapped, so a rank reads only
its shard's bytes, plus the embedding and norms that every rank keeps) and never samples: its logits exist
only to take part in the gather. If rank 0 goes away, the pipe ends and so does the worker.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from dataclasses import dataclass

import numpy as np

from refengine.parallel import messages


@dataclass(frozen=True)
class WorkerArgs:
    rank: int
    tp: int
    spec: str               # what rank 0 loaded (a workspace, HF dir, GGUF file, hub id or "demo")
    backend: str            # "cupy" (one GPU per rank, NCCL) or "numpy" (CPU ranks, pipes)
    dtype: str              # compute dtype, the same on every rank
    unique_id: object       # the NCCL communicator id (GPU ranks); None for CPU ranks
    env: tuple = ()         # (name, value) pairs set before CuPy / NCCL are imported


def load_spec(spec: str):
    """The LoadedModel of `spec`; a workspace without re-hashing its files (rank 0 has just checked them)."""
    from refengine.model.loader import load_model as load, resolve_source
    kind, where = resolve_source(spec)
    if kind == "workspace":
        from refengine.workspace.reader import load_workspace
        return load_workspace(where, verify=False)
    return load(spec)


def build_rank(args: WorkerArgs):
    """This rank's LlamaModel (no comm yet: the communicator is joined once every rank has loaded)."""
    from refengine.model.llama import LlamaModel
    from refengine.ops import get_backend
    from refengine.parallel.plan import make_plan
    from refengine.parallel.shard import group_size_of, shard_weights
    if args.backend == "cupy":
        import cupy
        cupy.cuda.Device(args.rank).use()          # rank r computes on visible GPU r
    ops = get_backend(args.backend)
    loaded = load_spec(args.spec)
    plan = make_plan(loaded.config, args.tp, group_size_of(loaded.weights))
    model = LlamaModel(plan.local_config(), shard_weights(loaded.weights, plan, args.rank), ops, np.dtype(args.dtype))
    return model, loaded.config.vocab_size


def join_comm(args: WorkerArgs, vocab_size: int, data_conn):
    if args.backend == "cupy":
        from refengine.parallel.nccl import NcclComm
        return NcclComm(args.tp, args.unique_id, args.rank, vocab_size)
    from refengine.parallel.host_comm import HostComm
    return HostComm(args.rank, [data_conn], vocab_size)


def serve(control, model) -> None:
    """Do rank 0's messages until STOP or until rank 0's end of the pipe closes."""
    from refengine.engine.kv_cache import KVCache
    kv = None
    while True:
        try:
            msg = messages.unpack(control.recv_bytes())
        except EOFError:
            return
        if msg.kind == messages.STOP:
            return
        if msg.kind == messages.ALLOCATE:
            kv = KVCache.allocate(model.cfg, msg.num_blocks, msg.block_size, dtype=model.dtype, xp=model.ops.xp)
        elif msg.kind == messages.COPY:
            src, dst = zip(*msg.copies)
            model.ops.copy_blocks(kv.k_caches, kv.v_caches, src, dst)
        elif msg.kind == messages.FORWARD:
            model.forward(msg.batch, kv)


def worker_main(args: WorkerArgs, control, data_conn=None) -> None:
    """The process entry point (must stay importable without CuPy: the spawn child imports this module)."""
    # Ctrl-C in a terminal reaches the whole process group: rank 0 decides (STOP, or its pipe closing)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(dict(args.env))
    try:
        model, vocab_size = build_rank(args)
    except Exception as e:                     # noqa: BLE001 — reported to rank 0, which raises it as one line
        control.send(("failed", f"{type(e).__name__}: {e}"))
        return
    control.send(("ready", None))
    try:
        model.comm = join_comm(args, vocab_size, data_conn)
        serve(control, model)
    except Exception:                          # noqa: BLE001 — a bug: keep the traceback, end the process
        traceback.print_exc()
        sys.exit(1)

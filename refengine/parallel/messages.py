"""What rank 0 sends its workers each step: one int64 buffer, a fixed header then the payload.

    header [8]:  kind, T, B, W, R, a, b, 0
    FORWARD  payload: input_ids [T] · positions [T] · cu_seqlens_q [B+1] · context_lens [B] · slot_mapping [T]
                      · logits_rows [R] · block_tables [B·W] (int32 values widened to int64)
    COPY     payload: src [a] · dst [a]                       (copy-on-write of KV blocks, before a FORWARD)
    ALLOCATE no payload: a = num_blocks, b = block_size       (the KV cache, once, after the engine sized it)
    STOP     no payload                                       (the worker leaves its loop and exits)

Every field of a ForwardBatch is here, so a worker runs exactly the step rank 0 runs. The buffer is a few
KB for a decode step of a large batch; rank 0 writes it to each worker's pipe before starting its own shard.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from refengine.model.llama import ForwardBatch

HEADER = 8
FORWARD, COPY, ALLOCATE, STOP = 1, 2, 3, 4
KINDS = {FORWARD: "forward", COPY: "copy", ALLOCATE: "allocate", STOP: "stop"}


@dataclass
class Message:
    kind: int
    batch: ForwardBatch | None = None
    copies: list[tuple[int, int]] | None = None
    num_blocks: int = 0
    block_size: int = 0


def _header(kind: int, T=0, B=0, W=0, R=0, a=0, b=0) -> np.ndarray:
    return np.array([kind, T, B, W, R, a, b, 0], dtype=np.int64)


def pack_forward(batch: ForwardBatch) -> bytes:
    T, B = len(batch.input_ids), len(batch.context_lens)
    tables = np.asarray(batch.block_tables)
    W, R = tables.shape[1], len(batch.logits_rows)
    parts = [_header(FORWARD, T, B, W, R), batch.input_ids, batch.positions, batch.cu_seqlens_q,
             batch.context_lens, batch.slot_mapping, batch.logits_rows, tables.reshape(-1)]
    return np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1) for p in parts]).tobytes()


def pack_copy(copies: list[tuple[int, int]]) -> bytes:
    pairs = np.asarray(copies, dtype=np.int64).reshape(-1, 2)
    return np.concatenate([_header(COPY, a=len(pairs)), pairs[:, 0], pairs[:, 1]]).tobytes()


def pack_allocate(num_blocks: int, block_size: int) -> bytes:
    return _header(ALLOCATE, a=num_blocks, b=block_size).tobytes()


def pack_stop() -> bytes:
    return _header(STOP).tobytes()


def unpack(buf: bytes) -> Message:
    words = np.frombuffer(buf, dtype=np.int64)
    kind, T, B, W, R, a, b, _ = (int(x) for x in words[:HEADER])
    body = words[HEADER:]
    if kind == FORWARD:
        sizes = [T, T, B + 1, B, T, R, B * W]
        if len(body) != sum(sizes):
            raise ValueError(f"forward message of {len(body)} words, expected {sum(sizes)}")
        ids, pos, cu, ctx, slots, rows, tables = np.split(body.copy(), np.cumsum(sizes)[:-1])
        return Message(kind, batch=ForwardBatch(ids, pos, cu, ctx, tables.astype(np.int32).reshape(B, W), slots,
                                                rows))
    if kind == COPY:
        return Message(kind, copies=list(zip(body[:a].tolist(), body[a:2 * a].tolist())))
    if kind == ALLOCATE:
        return Message(kind, num_blocks=a, block_size=b)
    if kind == STOP:
        return Message(kind)
    raise ValueError(f"unknown message kind {kind}")

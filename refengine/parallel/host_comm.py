"""The collectives between CPU ranks (--backend numpy --tp N): one pipe from each worker to rank 0.

Rank 0 is the hub. all_reduce: every worker sends its partial sum, rank 0 adds them in rank order and sends
the total back; gather_vocab: every worker sends its vocabulary block and rank 0, the only rank that
samples, puts them side by side. The sum is taken in rank order, as ThreadComm (simulated.py) takes it.

    worker r ──x_r──►  rank 0: total = x_0 + x_1 + … (rank order)  ──total──►  worker r
"""

from __future__ import annotations

import numpy as np


def _send(conn, x: np.ndarray) -> None:
    conn.send_bytes(np.ascontiguousarray(x).tobytes())


def _view_like(conn, like: np.ndarray) -> np.ndarray:
    """The next array from `conn`, shaped like `like`: a read-only view of the received bytes."""
    return np.frombuffer(conn.recv_bytes(), dtype=like.dtype).reshape(like.shape)


def _recv_like(conn, like: np.ndarray) -> np.ndarray:
    """As _view_like, but a writable copy (the caller's model may update it in place)."""
    return _view_like(conn, like).copy()


class HostComm:
    """One CPU rank's end. Rank 0 holds a pipe to each worker (rank order); a worker holds its pipe to rank 0."""

    def __init__(self, rank: int, conns: list, vocab_size: int):
        self.rank, self.conns, self.vocab_size = rank, conns, vocab_size

    def all_reduce(self, x: np.ndarray) -> np.ndarray:
        if self.rank:
            _send(self.conns[0], x)
            return _recv_like(self.conns[0], x)
        total = np.array(x, copy=True)
        for conn in self.conns:
            total += _view_like(conn, x)
        for conn in self.conns:
            _send(conn, total)
        return total

    def gather_vocab(self, logits: np.ndarray) -> np.ndarray:
        """Rank 0: [R, V]. A worker's logits are never read, so it gets its own block back."""
        if self.rank:
            _send(self.conns[0], logits)
            return logits
        parts = [logits] + [_view_like(conn, logits) for conn in self.conns]     # concatenate copies
        return np.concatenate(parts, axis=1)[:, :self.vocab_size]

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

"""Which generation requests get in: at most `limit` in flight, none while the server drains.

    request ──► slot() ── draining? ──► 503 + Retry-After
                      └── in_flight == limit? ──► 429 + Retry-After
                      └── in: in_flight += 1, its engine session ids recorded ... out: in_flight -= 1

A request beyond the limit is refused at once instead of queued: the client (or its load balancer) can
retry elsewhere, and the engine's own queue stays as long as --max-concurrent-requests allows.
On shutdown `drain` waits (bounded) for the requests in flight, then `abort` cancels the rest in the
engine: their streams end with finish_reason "abort" and their KV blocks are freed.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Hashable, Iterable

from refengine.server.errors import ApiError

RETRY_AFTER_S = 1


class Admission:
    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self.draining = False
        self.sessions: dict[Hashable, int] = {}     # engine session id -> requests using it (normally 1)
        self._idle = asyncio.Event()
        self._idle.set()

    @asynccontextmanager
    async def slot(self, session_ids: Iterable[Hashable] = ()):
        if self.draining:
            raise ApiError(503, "the server is shutting down; retry on another replica", type="server_error",
                           code="server_draining", headers={"Retry-After": str(RETRY_AFTER_S)})
        if self.in_flight >= self.limit:
            raise ApiError(429, f"too many requests in flight (limit {self.limit}); retry shortly",
                           type="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        ids = list(session_ids)
        self._enter(ids)
        try:
            yield
        finally:
            self._leave(ids)

    def _enter(self, ids: list[Hashable]) -> None:
        self.in_flight += 1
        self._idle.clear()
        for sid in ids:
            self.sessions[sid] = self.sessions.get(sid, 0) + 1

    def _leave(self, ids: list[Hashable]) -> None:
        self.in_flight -= 1
        for sid in ids:
            self.sessions[sid] -= 1
            if not self.sessions[sid]:
                del self.sessions[sid]
        if not self.in_flight:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests; wait up to `timeout` seconds for those in flight. True if all finished."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def abort(self, engine) -> int:
        """Cancel the engine sessions of the requests still in flight; how many."""
        ids = list(self.sessions)
        for sid in ids:
            engine.cancel(sid)
        return len(ids)

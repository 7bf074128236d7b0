"""Outputs from the engine thread to the asyncio event loops that wait for them, one wake-up per loop per
engine step rather than one per output.

    engine thread: step → 64 outputs ─► inbox.put(queue, out) ×64 ─► (first one only) call_soon_threadsafe(flush)
    loop thread:   flush → queue.put_nowait(out) ×64                 (one self-pipe write, one loop wake-up)

A server with many streaming clients on one loop pays the cross-thread hand-off once per step; each
call_soon_threadsafe is a lock and a pipe write that also holds the GIL the engine thread needs.
"""

from __future__ import annotations

import asyncio
import threading
import weakref


class LoopInbox:
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: list[tuple[asyncio.Queue, object]] = []
        self._lock = threading.Lock()

    def put(self, queue: asyncio.Queue, item) -> None:
        """From any thread. RuntimeError when the loop is closed (nobody will read)."""
        if self.loop.is_closed():
            raise RuntimeError("the event loop is closed")
        with self._lock:
            self._items.append((queue, item))
            wake = len(self._items) == 1
        if wake:
            self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for queue, item in items:
            queue.put_nowait(item)


class Inboxes:
    """One LoopInbox per event loop, forgotten with the loop."""

    def __init__(self):
        self._by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def for_loop(self, loop: asyncio.AbstractEventLoop) -> LoopInbox:
        with self._lock:
            inbox = self._by_loop.get(loop)
            if inbox is None:
                inbox = self._by_loop[loop] = LoopInbox(loop)
            return inbox

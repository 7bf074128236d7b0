"""The engine thread's hand-off to event loops: every item arrives, in order, with one wake-up per batch."""

import asyncio
import threading

import pytest

from refengine.engine.loop_inbox import Inboxes, LoopInbox


def test_a_burst_of_outputs_wakes_the_loop_once_and_arrives_in_order():
    async def main():
        loop = asyncio.get_running_loop()
        inbox, queues = LoopInbox(loop), [asyncio.Queue(), asyncio.Queue()]
        wakeups = []
        original = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: wakeups.append(a) or original(*a)
        burst = threading.Thread(target=lambda: [inbox.put(queues[i % 2], i) for i in range(50)])
        burst.start()
        burst.join()                                     # the loop has not run in between: one wake-up
        got = [[await q.get() for _ in range(25)] for q in queues]
        inbox.put(queues[0], "later")                    # after a flush, the next item wakes the loop again
        got[0].append(await queues[0].get())
        return wakeups, got
    wakeups, got = asyncio.run(main())
    assert len(wakeups) == 2
    assert got == [list(range(0, 50, 2)) + ["later"], list(range(1, 50, 2))]


def test_a_closed_loop_refuses_so_the_engine_can_cancel():
    loop = asyncio.new_event_loop()
    inbox = Inboxes().for_loop(loop)
    loop.close()
    with pytest.raises(RuntimeError):
        inbox.put(asyncio.Queue(), "x")


def test_one_inbox_per_loop():
    inboxes, a, b = Inboxes(), asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        assert inboxes.for_loop(a) is inboxes.for_loop(a) and inboxes.for_loop(a) is not inboxes.for_loop(b)
    finally:
        a.close()
        b.close()

"""stages/inbox.py: the one bounded FIFO: waits for room, cancellation safety, drop-oldest, purge."""

from __future__ import annotations

import asyncio

import pytest

from stages.inbox import Inbox


async def test_inbox_is_a_bounded_fifo_whose_put_waits_for_room() -> None:
    inbox: Inbox[int] = Inbox(2)
    assert inbox.empty()
    assert not inbox.full()
    assert inbox.try_put(1)
    assert inbox.try_put(2)
    assert inbox.full()
    assert not inbox.try_put(3)
    with pytest.raises(asyncio.QueueFull):
        inbox.put_nowait(3)
    blocked = asyncio.create_task(inbox.put(3))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert await inbox.get() == 1
    await asyncio.wait_for(blocked, 1)
    assert [inbox.get_nowait(), inbox.get_nowait()] == [2, 3]
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()


async def test_inbox_get_waits_and_a_cancelled_get_takes_nothing() -> None:
    inbox: Inbox[str] = Inbox(4)
    first = asyncio.create_task(inbox.get())
    second = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait("a")
    first.cancel()  # woken with "a" but cancelled before it ran: "a" goes to the next getter
    assert await asyncio.wait_for(second, 1) == "a"
    with pytest.raises(asyncio.CancelledError):
        await first
    assert inbox.empty()


async def test_a_cancelled_put_appends_nothing_and_passes_the_room_on() -> None:
    inbox: Inbox[int] = Inbox(1)
    inbox.put_nowait(0)
    first = asyncio.create_task(inbox.put(1))
    second = asyncio.create_task(inbox.put(2))
    await asyncio.sleep(0)
    assert inbox.get_nowait() == 0
    first.cancel()
    await asyncio.wait_for(second, 1)
    with pytest.raises(asyncio.CancelledError):
        await first
    assert inbox.get_nowait() == 2
    assert inbox.empty()


async def test_drop_oldest_keeps_the_newest_audio() -> None:
    inbox: Inbox[int] = Inbox(3)
    dropped = [inbox.put_drop_oldest(i) for i in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert [inbox.get_nowait() for _ in range(3)] == [2, 3, 4]


async def test_purge_removes_a_turns_items_and_wakes_waiting_producers() -> None:
    inbox: Inbox[tuple[int, str]] = Inbox(2)
    inbox.put_nowait((1, "a"))
    inbox.put_nowait((2, "b"))
    blocked = asyncio.create_task(inbox.put((2, "c")))
    await asyncio.sleep(0)  # lets the put start waiting (a yield, not a wait for time)
    assert not blocked.done()
    assert inbox.purge(lambda item: item[0] == 1) == 1
    await asyncio.wait_for(blocked, 1)
    assert [inbox.get_nowait(), inbox.get_nowait()] == [(2, "b"), (2, "c")]
    assert inbox.empty()


def test_drop_oldest_can_spare_markers() -> None:
    inbox: Inbox[str] = Inbox(3)
    audio = str.startswith
    for item in ("a1", "END", "a2"):
        inbox.put_nowait(item)
    assert inbox.put_drop_oldest("a3", lambda x: audio(x, "a")) == 1
    assert [inbox.get_nowait() for _ in range(3)] == ["END", "a2", "a3"]
    for item in ("END", "END", "END"):
        inbox.put_nowait(item)
    assert inbox.put_drop_oldest("a4", lambda x: audio(x, "a")) == 1  # nothing to spare it for: itself
    assert inbox.put_drop_oldest("END", lambda x: audio(x, "a")) == 0  # a marker always goes in
    assert inbox.qsize() == 4

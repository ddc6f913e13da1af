"""The one bounded FIFO of voxpipe: stage inboxes, the outbox's message lane and the playhead's audio queue.

``asyncio.Queue``'s interface minus ``join``/``task_done``, plus what the overflow policies need
(``put_drop_oldest`` for live client audio, ``purge`` for an interrupted turn, ``peek`` for pacing).
Every item crosses one of these per hop, so it is kept lean (about half the cost of an
``asyncio.Queue`` hop). Waiters are woken in order, and a cancelled ``get``/``put`` hands its wake-up
on, as ``asyncio.Queue`` does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """A bounded FIFO whose ``put`` waits for room; ``try_put`` never waits."""

    __slots__ = ("_getters", "_items", "_putters", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("an Inbox needs maxsize >= 1 (every queue is bounded)")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        # waiters in order: lists, as there are rarely more than one (a deque costs 760 bytes, a list 56)
        self._getters: list[asyncio.Future[None]] = []
        self._putters: list[asyncio.Future[None]] = []

    def qsize(self) -> int:
        return len(self._items)

    def room(self) -> int:
        return self.maxsize - len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def peek(self) -> T:
        """The oldest item, left in place (IndexError when empty)."""
        return self._items[0]

    @staticmethod
    def _wake(waiters: list[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return

    def try_put(self, item: T) -> bool:
        """Append ``item`` if there is room; False when full."""
        if len(self._items) >= self.maxsize:
            return False
        self._items.append(item)
        if self._getters:
            self._wake(self._getters)
        return True

    def put_nowait(self, item: T) -> None:
        if not self.try_put(item):
            raise asyncio.QueueFull

    def put_drop_oldest(self, item: T, droppable: Callable[[T], bool] | None = None) -> int:
        """Overflow policy for live audio: make room by dropping the oldest items; returns how many.

        With ``droppable``, only such items are dropped: the oldest one when full, else the new item if it
        is droppable itself; a marker that may not be dropped (an end of turn) goes in regardless, so the
        queue holds at most ``maxsize`` plus the markers waiting in it."""
        if droppable is None:
            dropped = 0
            while len(self._items) >= self.maxsize:
                self._items.popleft()
                dropped += 1
            self.try_put(item)
            return dropped
        if len(self._items) < self.maxsize:
            self.try_put(item)
            return 0
        for i, queued in enumerate(self._items):
            if droppable(queued):
                del self._items[i]
                self._items.append(item)
                return 1
        if droppable(item):
            return 1
        self._items.append(item)
        if self._getters:
            self._wake(self._getters)
        return 0

    async def put(self, item: T) -> None:
        """Wait for room, then append. Cancellation-safe: a cancelled put has not appended."""
        while len(self._items) >= self.maxsize:
            putter = asyncio.get_running_loop().create_future()
            self._putters.append(putter)
            try:
                await putter
            except BaseException:
                putter.cancel()
                if putter in self._putters:
                    self._putters.remove(putter)
                if len(self._items) < self.maxsize and not putter.cancelled():
                    self._wake(self._putters)  # woken but leaving: pass the room on
                raise
        self.try_put(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if self._putters:
            self._wake(self._putters)
        return item

    async def get(self) -> T:
        """Wait for an item. Cancellation-safe: a cancelled get has taken nothing."""
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if getter in self._getters:
                    self._getters.remove(getter)
                if self._items and not getter.cancelled():
                    self._wake(self._getters)  # woken but leaving: pass the item on
                raise
        return self.get_nowait()

    def purge(self, drop: Callable[[T], bool]) -> int:
        """Remove every item ``drop`` says yes to (an interrupted turn's); returns how many."""
        before = len(self._items)
        self._items = deque(item for item in self._items if not drop(item))
        freed = before - len(self._items)
        for _ in range(min(freed, len(self._putters))):
            self._wake(self._putters)
        return freed

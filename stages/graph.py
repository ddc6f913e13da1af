"""Runs one session's stage graph: a task per stage reading its bounded inbox, and each stage's emitter.

An emitter sends a stage's output two ways: downstream (the next stage's inbox, or the outbox's
end-of-turn marker for the last stage) and, when the client subscribed to the stage, to the client.
Interruptible stages handle each item in a child task so a turn's in-flight work can be cancelled.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from server.errors import StageError
from server.metrics import QUEUE_DROPS_TOTAL
from server.outbox import Outbox
from stages.base import Stage
from stages.items import AudioChunk, AudioIn, Commit, Item, SpeechAudio, TurnDone

T = TypeVar("T")

# Items whose ``to_message`` is always None: never offered to the client lane.
SILENT_ITEMS: frozenset[type[Any]] = frozenset({AudioIn, Commit, SpeechAudio, TurnDone})


class Inbox(Generic[T]):
    """A stage's bounded FIFO: ``asyncio.Queue``'s interface minus ``join``/``task_done``.

    Every item crosses one of these per hop, so it is kept lean (about half the cost of an
    ``asyncio.Queue`` hop). ``put`` waits for room; ``try_put`` never waits. Waiters are woken in
    order, and a cancelled ``get``/``put`` hands its wake-up on, as ``asyncio.Queue`` does.
    """

    __slots__ = ("_getters", "_items", "_putters", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("an Inbox needs maxsize >= 1 (every queue is bounded)")
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._getters: deque[asyncio.Future[None]] = deque()
        self._putters: deque[asyncio.Future[None]] = deque()

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> None:
        while waiters:
            waiter = waiters.popleft()
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


class GraphHost(Protocol):
    """What the runners need from their session."""

    turns: dict[int, Any]

    def observe(self, stage: str, item: Item) -> None: ...

    def stage_failed(self, stage: str, turn: int | None, exc: Exception) -> None: ...

    def spawn(self, coro: Any) -> asyncio.Task[Any]: ...


def put_drop_oldest(queue: Inbox[Any], item: Any, edge: str) -> bool:
    """Overflow policy for live client audio: drop the oldest item, keep the conversation live.

    Returns True when something was dropped (counted in ``voxpipe_queue_drops_total``).
    """
    if queue.try_put(item):
        return False
    dropped = False
    while queue.full():
        queue.get_nowait()
        dropped = True
        QUEUE_DROPS_TOTAL.inc(edge=edge)
    queue.put_nowait(item)
    return dropped


class StageEmitter:
    __slots__ = ("_host", "_next", "_observe", "_outbox", "_turns", "inline_next", "name", "subscribed")

    def __init__(
        self,
        name: str,
        host: GraphHost,
        outbox: Outbox,
        next_inbox: Inbox[Any] | None,
        subscribed: bool,
    ) -> None:
        self.name = name
        self.subscribed = subscribed
        self._host = host
        self._observe = host.observe
        self._turns = host.turns
        self._outbox = outbox
        self._next = next_inbox
        # the next stage's runner when it takes inline hand-offs from this (non-interruptible) stage
        self.inline_next: StageRunner | None = None

    async def emit(self, item: Item) -> None:
        """Cancellation-safe: a cancelled emit has handed the item to nobody or to all its receivers but the
        one it was waiting on (a full queue); the turn being cancelled is over, so nothing stale is sent."""
        self._observe(self.name, item)
        turn = item.turn
        if turn is not None and turn not in self._turns:
            return
        kind = type(item)
        nxt = self._next
        if kind is TurnDone:
            if nxt is None:
                await self._outbox.put_end(turn)  # type: ignore[arg-type]
            else:
                await self._forward(nxt, item)
            return
        if self.subscribed:
            if type(item) is AudioChunk:
                await self._outbox.put_audio(self.name, item)
            elif kind not in SILENT_ITEMS:
                await self._outbox.put_message(self.name, turn, item)
        if nxt is not None and item.downstream:
            await self._forward(nxt, item)

    def has_room(self, items: int) -> bool:
        """Whether ``items`` outputs fit downstream and in the client lane without waiting."""
        nxt = self._next
        if nxt is not None and nxt.maxsize - nxt.qsize() < items:
            return False
        return not self.subscribed or self._outbox.has_room(items)

    async def _forward(self, nxt: Inbox[Any], item: Item) -> None:
        runner = self.inline_next
        if runner is not None and runner.try_inline():
            await runner.run_inline(item)
        elif not nxt.try_put(item):
            await nxt.put(item)


class StageRunner:
    """The task of one stage: take an item, drop it if its turn is over, hand it to the stage."""

    def __init__(self, name: str, stage: Stage, inbox: Inbox[Any], emitter: StageEmitter, host: GraphHost):
        self.name = name
        self.stage = stage
        self.inbox = inbox
        self.emitter = emitter
        self.host = host
        self._current: tuple[int | None, asyncio.Task[None]] | None = None
        self._failed_turns: set[int] = set()
        # Inline hand-offs (``try_inline``): only for cheap non-interruptible stages that declare ``inline``.
        self.inlinable = bool(getattr(stage, "inline", False)) and not stage.interruptible
        self._parked = False  # waiting in ``inbox.get()`` on an empty inbox
        self._inline_busy = False
        self._inline_done = asyncio.Event()

    async def run(self) -> None:
        turns = self.host.turns
        interruptible = self.stage.interruptible
        inbox = self.inbox
        while True:
            self._parked = True
            try:
                item = await inbox.get()
            finally:
                self._parked = False
            while self._inline_busy:  # an item handed over inline came before this one: let it finish
                await self._inline_done.wait()
            turn = item.turn
            if turn is not None and turn not in turns:
                continue  # an item of a finished or interrupted turn: drop it
            if interruptible:
                await self._run_child(turn, self._handle(item))
            else:
                await self._handle(item)

    async def _run_child(self, turn: int | None, work: Awaitable[None]) -> None:
        task = self.host.spawn(work)
        self._current = (turn, task)
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                task.cancel()
                raise  # the session is closing
            # only the child was cancelled (its turn was interrupted): carry on with the next item
        finally:
            self._current = None

    def try_inline(self) -> bool:
        """Claim this stage for one inline hand-off: True when it is idle on an empty inbox.

        The caller must then ``await run_inline(item)``. Items that arrive meanwhile wait in the inbox
        and are handled after it, so order is kept; so is the one-item-at-a-time rule.
        """
        if self.inlinable and self._parked and not self._inline_busy and not self.inbox.qsize():
            self._inline_busy = True
            self._inline_done.clear()
            return True
        return False

    async def run_inline(self, item: Item) -> None:
        """Handle ``item`` in the caller's task, exactly as the runner's own loop would."""
        try:
            turn = item.turn
            if turn is None or turn in self.host.turns:
                await self._handle(item)
        finally:
            self._inline_busy = False
            self._inline_done.set()

    def cancel_turn(self, turn: int) -> None:
        """Cancel the in-flight work of ``turn`` at once (task cancellation, not a flag polled later)."""
        if self._current is not None and self._current[0] == turn:
            self._current[1].cancel()
        self._failed_turns.discard(turn)

    async def _handle(self, item: Item) -> None:
        turn = item.turn
        try:
            if type(item) is TurnDone:
                if item.turn in self._failed_turns:
                    self._failed_turns.discard(item.turn)
                else:
                    await self.stage.finish(item.turn, self.emitter)
                await self.emitter.emit(item)
            elif turn is None or turn not in self._failed_turns:
                await self.stage.process(item, self.emitter)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a stage's failure ends its turn's work, never the session
            self.host.stage_failed(self.name, turn, exc)
            if type(item) is TurnDone:
                await self.emitter.emit(item)  # the turn still ends downstream
            elif turn is not None:
                self._failed_turns.add(turn)


def stage_error(exc: Exception) -> StageError:
    """The error a client sees for a stage failure: its own code, or ``stage_failed``."""
    if isinstance(exc, StageError):
        return exc
    return StageError(f"{type(exc).__name__}: {exc}")


Factory = Callable[[], Stage]

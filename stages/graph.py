"""Runs one session's stage graph: a task per stage reading its bounded inbox, and each stage's emitter.

An emitter sends a stage's output two ways: downstream (the next stage's inbox, or the outbox's
end-of-turn marker for the last stage) and, when the client subscribed to the stage, to the client.
Interruptible stages handle each item in a child task so a turn's in-flight work can be cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from server.errors import StageError
from server.metrics import QUEUE_DROPS_TOTAL
from server.outbox import Outbox
from stages.base import Stage
from stages.items import AudioChunk, Item, TurnDone


class GraphHost(Protocol):
    """What the runners need from their session."""

    turns: dict[int, Any]

    def observe(self, stage: str, item: Item) -> None: ...

    def stage_failed(self, stage: str, turn: int | None, exc: Exception) -> None: ...

    def spawn(self, coro: Any) -> asyncio.Task[Any]: ...


def put_drop_oldest(queue: asyncio.Queue[Any], item: Any, edge: str) -> bool:
    """Overflow policy for live client audio: drop the oldest item, keep the conversation live.

    Returns True when something was dropped (counted in ``voxpipe_queue_drops_total``).
    """
    dropped = False
    while queue.full():
        queue.get_nowait()
        dropped = True
        QUEUE_DROPS_TOTAL.inc(edge=edge)
    queue.put_nowait(item)
    return dropped


class StageEmitter:
    __slots__ = ("_host", "_next", "_observe", "_outbox", "_turns", "name", "subscribed")

    def __init__(
        self,
        name: str,
        host: GraphHost,
        outbox: Outbox,
        next_inbox: asyncio.Queue[Any] | None,
        subscribed: bool,
    ) -> None:
        self.name = name
        self.subscribed = subscribed
        self._host = host
        self._observe = host.observe
        self._turns = host.turns
        self._outbox = outbox
        self._next = next_inbox

    async def emit(self, item: Item) -> None:
        """Cancellation-safe: a cancelled emit has handed the item to nobody or to all its receivers but the
        one it was waiting on (a full queue); the turn being cancelled is over, so nothing stale is sent."""
        self._observe(self.name, item)
        turn = item.turn
        if turn is not None and turn not in self._turns:
            return
        if type(item) is TurnDone:
            if self._next is None:
                await self._outbox.put_end(turn)  # type: ignore[arg-type]
            else:
                await self._next.put(item)
            return
        if self.subscribed:
            if type(item) is AudioChunk:
                await self._outbox.put_audio(self.name, item)
            elif item.to_message(self.name) is not None:
                await self._outbox.put_message(self.name, turn, item)
        if self._next is not None and item.downstream:
            await self._next.put(item)


class StageRunner:
    """The task of one stage: take an item, drop it if its turn is over, hand it to the stage."""

    def __init__(self, name: str, stage: Stage, inbox: asyncio.Queue[Any], emitter: StageEmitter, host: GraphHost):
        self.name = name
        self.stage = stage
        self.inbox = inbox
        self.emitter = emitter
        self.host = host
        self._current: tuple[int | None, asyncio.Task[None]] | None = None
        self._failed_turns: set[int] = set()

    async def run(self) -> None:
        turns = self.host.turns
        interruptible = self.stage.interruptible
        while True:
            item = await self.inbox.get()
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

"""One session's stage graph: a bounded inbox and a task per stage, joined in a chain, and each stage's emitter.

An emitter sends a stage's output two ways: downstream (the next stage's inbox, or the sink's
end-of-turn marker for the last stage) and, when the client subscribed to the stage, to the sink
(the session's outbox, behind the small ``Sink`` protocol). Interruptible stages handle each item in
a child task so a turn's in-flight work can be cancelled.

Overflow policy per edge: raw client audio drops the oldest (``feed_audio``), every other edge blocks
its producer (text is never dropped).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Mapping
from typing import Any, Protocol

from stages.base import Stage, StageContext
from stages.inbox import Inbox
from stages.items import AudioChunk, AudioIn, InputCleared, Item, SpeechAudio, TurnDone, UserClear, UserCommit
from stages.registry import StageSpec
from vocab.errors import StageError
from vocab.metrics import QUEUE_DROPS_TOTAL

# Internal plumbing, never offered to the client.
SILENT_ITEMS: frozenset[type[Any]] = frozenset({AudioIn, UserCommit, UserClear, InputCleared, SpeechAudio, TurnDone})
# more than the VAD emits for one frame (speech_start, pre-roll and speech, speech_end, the turn's end)
INLINE_OUTPUTS = 6


class Sink(Protocol):
    """Where the graph's client-bound outputs go (the session's outbox)."""

    async def put_message(self, stage: str, item: Item) -> None:
        """A stage output other than audio, for the client; waits while the sink is full."""
        ...

    async def put_audio(self, stage: str, chunk: AudioChunk) -> None:
        """Agent audio, paced to the client by the sink; waits while the sink is full."""
        ...

    async def end_turn(self, turn: int) -> None:
        """The last stage is done with ``turn``: it ends once its audio has played."""
        ...

    def has_room(self, items: int) -> bool:
        """Whether ``items`` more outputs fit without waiting."""
        ...


class GraphHost(Protocol):
    """What the runners need from their session."""

    @property
    def live_turns(self) -> Mapping[int, Any]: ...

    def observe(self, stage: str, item: Item) -> None: ...

    def stage_failed(self, stage: str, turn: int | None, exc: Exception) -> None: ...

    def spawn(self, coro: Any) -> asyncio.Task[Any]: ...


class Graph:
    """The graph of one session, built from the process-wide ``StageSpec``s."""

    def __init__(
        self,
        specs: list[StageSpec],
        ctx: StageContext,
        host: GraphHost,
        sink: Sink,
        *,
        subscribed: Collection[str],
        audio_in_items: int,
        stage_queue_items: int,
    ) -> None:
        self.specs = specs
        self.inboxes: list[Inbox[Any]] = [
            Inbox(audio_in_items if spec.input_type == "audio" else stage_queue_items) for spec in specs
        ]
        self.runners: list[StageRunner] = []
        for i, spec in enumerate(specs):
            nxt = self.inboxes[i + 1] if i + 1 < len(specs) else None
            emitter = StageEmitter(spec.name, host, sink, nxt, spec.name in subscribed)
            stage = spec.factory.new_stage(ctx)
            self.runners.append(StageRunner(spec.name, stage, self.inboxes[i], emitter, host))
        for upstream, downstream in zip(self.runners, self.runners[1:], strict=False):
            # Only from a non-interruptible stage: an interrupted child task must not cut a cheap stage's work.
            if downstream.inlinable and not upstream.stage.interruptible:
                upstream.emitter.inline_next = downstream
        # where client audio enters: the first stage that takes raw audio or speech
        self.audio_entry = next((i for i, s in enumerate(specs) if s.input_type in ("audio", "speech")), None)
        self.audio_in_dropped = 0

    @property
    def has_audio_out(self) -> bool:
        return bool(self.specs) and self.specs[-1].output_type == "audio"

    def index_of(self, name: str) -> int | None:
        return next((i for i, spec in enumerate(self.specs) if spec.name == name), None)

    def index_of_kind(self, kind: str) -> int | None:
        return next((i for i, spec in enumerate(self.specs) if spec.kind == kind), None)

    def start(self, tg: asyncio.TaskGroup, prefix: str) -> list[asyncio.Task[None]]:
        return [tg.create_task(runner.run(), name=f"{prefix}:{runner.name}") for runner in self.runners]

    def cancel_turn(self, turn: int) -> None:
        """Cancel the in-flight work of ``turn`` in every stage (task cancellation, not a flag)."""
        for runner in self.runners:
            runner.cancel_turn(turn)

    async def close(self) -> None:
        for runner in self.runners:
            await runner.stage.close()

    async def put(self, index: int, item: Item) -> None:
        """Enter the graph at stage ``index``; waits while its inbox is full (text is never dropped)."""
        inbox = self.inboxes[index]
        if not inbox.try_put(item):
            await inbox.put(item)

    async def feed_audio(self, index: int, item: AudioIn | UserCommit | UserClear) -> None:
        """Raw client audio into an audio stage. An idle cheap stage (the VAD) takes it in this task,
        but only when its outputs fit: the caller (the socket reader) must never wait on a slow stage;
        otherwise the overflow policy of live audio applies (``feed_audio_nowait``)."""
        runner = self.runners[index]
        if runner.emitter.has_room(INLINE_OUTPUTS) and runner.try_inline():
            await runner.run_inline(item)
        else:
            self.feed_audio_nowait(index, item)

    def feed_audio_nowait(self, index: int, item: AudioIn | UserCommit | UserClear) -> None:
        """Raw client audio into an audio stage's inbox, dropping the oldest audio when full (counted)."""
        dropped = self.inboxes[index].put_drop_oldest(item, _is_audio)
        if dropped:
            self.audio_in_dropped += dropped
            QUEUE_DROPS_TOTAL.inc(dropped, edge="audio_in")


class StageEmitter:
    __slots__ = ("_next", "_observe", "_sink", "_turns", "inline_next", "name", "subscribed")

    def __init__(
        self,
        name: str,
        host: GraphHost,
        sink: Sink,
        next_inbox: Inbox[Any] | None,
        subscribed: bool,
    ) -> None:
        self.name = name
        self.subscribed = subscribed
        self._observe = host.observe
        self._turns = host.live_turns
        self._sink = sink
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
        nxt = self._next
        if type(item) is TurnDone:
            if nxt is None:
                await self._sink.end_turn(item.turn)
            else:
                await self._forward(nxt, item)
            return
        if self.subscribed:
            if type(item) is AudioChunk:
                await self._sink.put_audio(self.name, item)
            elif type(item) not in SILENT_ITEMS:
                await self._sink.put_message(self.name, item)
        if nxt is not None and item.downstream:
            await self._forward(nxt, item)

    def has_room(self, items: int) -> bool:
        """Whether ``items`` outputs fit downstream and in the client lane without waiting."""
        nxt = self._next
        if nxt is not None and nxt.maxsize - nxt.qsize() < items:
            return False
        return not self.subscribed or self._sink.has_room(items)

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
        self._inline_done = asyncio.Event() if self.inlinable else None

    async def run(self) -> None:
        turns = self.host.live_turns
        interruptible = self.stage.interruptible
        inbox = self.inbox
        while True:
            self._parked = True
            try:
                item = await inbox.get()
            finally:
                self._parked = False
            while self._inline_busy:  # an item handed over inline came before this one: let it finish
                assert self._inline_done is not None  # only inlinable stages are ever busy inline
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
            assert self._inline_done is not None
            self._inline_done.clear()
            return True
        return False

    async def run_inline(self, item: Item) -> None:
        """Handle ``item`` in the caller's task, exactly as the runner's own loop would."""
        try:
            turn = item.turn
            if turn is None or turn in self.host.live_turns:
                await self._handle(item)
        finally:
            self._inline_busy = False
            assert self._inline_done is not None
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


def _is_audio(item: Any) -> bool:
    """What the audio overflow policy may drop: audio, never a commit, a clear or an end of turn."""
    return type(item) is AudioIn


def stage_error(exc: Exception) -> StageError:
    """A stage failure as a ``StageError``: its own code, or ``stage_failed``. Its ``message`` (details, for the
    server log) differs from its ``public_message`` (for the client)."""
    if isinstance(exc, StageError):
        return exc
    return StageError(f"{type(exc).__name__}: {exc}")

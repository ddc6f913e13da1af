"""stages/graph.py: the stages' bounded inboxes, and which items are never offered to the client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from server.config import SessionDefaults
from server.session import Session
from stages.base import BaseStage, Emitter, StageContext
from stages.graph import SILENT_ITEMS, Inbox, put_drop_oldest
from stages.items import AudioIn, Commit, Item, ReplyDelta, SpeechAudio, TurnDone
from stages.registry import StageSpec, build_stage
from tests.client import tone
from transports import messages as m


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
    dropped = [put_drop_oldest(inbox, i, "test") for i in range(5)]
    assert dropped == [False, False, False, True, True]
    assert [inbox.get_nowait() for _ in range(3)] == [2, 3, 4]


def test_silent_items_have_no_client_message() -> None:
    samples: list[Item] = [AudioIn(b"\0\0", 16000, 0.0), Commit(0.0), SpeechAudio(1, b"\0\0", 16000), TurnDone(1)]
    assert {type(s) for s in samples} == SILENT_ITEMS
    assert all(s.to_message("stage") is None for s in samples)


class _Gate(BaseStage):
    """An inline stage that records what it handles and can be held mid-item."""

    inline: ClassVar[bool] = True

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.active = 0
        self.max_active = 0
        self.hold = asyncio.Event()
        self.hold.set()

    async def process(self, item: Item, out: Emitter) -> None:
        assert isinstance(item, ReplyDelta)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.seen.append(item.text)
        await self.hold.wait()
        self.active -= 1
        await out.emit(item)


class _GateEngine:
    input_type: ClassVar[str] = "text"
    output_type: ClassVar[str] = "text"

    def __init__(self) -> None:
        self.stage = _Gate()

    def load(self, log: Any) -> None:
        return None

    def new_stage(self, ctx: StageContext) -> _Gate:
        return self.stage

    async def aclose(self) -> None:
        return None


@contextlib.asynccontextmanager
async def graph_running(session: Session) -> AsyncIterator[None]:
    """The session's graph running with no client messages (items are put into its inboxes directly)."""
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def messages() -> AsyncIterator[Any]:
        await never
        yield None

    running = asyncio.create_task(session.run(messages()))
    await asyncio.sleep(0.01)
    try:
        yield
    finally:
        never.cancel()
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def test_inline_hand_off_keeps_order_and_one_item_at_a_time() -> None:
    gate_engine = _GateEngine()
    specs = [
        build_stage({"name": "first", "engine": "passthrough", "type": "text"}, "pipeline[0]"),
        StageSpec(name="gate", engine_name="gate", kind="custom", engine=gate_engine),
    ]
    replies: list[str] = []

    async def send(message: Any) -> None:
        if isinstance(message, m.Reply):
            replies.append(message.text)

    session = Session(m.Hello(protocol=1, subscribe=["gate"]), specs, SessionDefaults(), send)
    assert session.runners[0].emitter.inline_next is session.runners[1]
    gate = gate_engine.stage
    async with graph_running(session):
        turn = session.new_turn(from_speech=False)
        gate.hold.clear()
        await session.inboxes[0].put(ReplyDelta(turn, "a"))  # first -> gate inline, held mid-item
        await asyncio.sleep(0.01)
        assert gate.seen == ["a"]
        await session.inboxes[1].put(ReplyDelta(turn, "b"))  # straight into gate's inbox while "a" is held
        await session.inboxes[0].put(ReplyDelta(turn, "c"))  # gate is busy: queued behind "b"
        await asyncio.sleep(0.01)
        assert gate.seen == ["a"]
        gate.hold.set()
        for _ in range(100):
            if len(replies) == 3:
                break
            await asyncio.sleep(0.01)
    assert gate.seen == ["a", "b", "c"]
    assert replies == ["a", "b", "c"]
    assert gate.max_active == 1


class _Held(BaseStage):
    """A non-interruptible stage stuck on its first item until ``hold`` is set."""

    def __init__(self) -> None:
        self.hold = asyncio.Event()
        self.handled = 0

    async def process(self, item: Item, out: Emitter) -> None:
        await self.hold.wait()
        self.handled += 1


class _HeldEngine(_GateEngine):
    input_type: ClassVar[str] = "speech"

    def __init__(self) -> None:
        self.stage = _Held()  # type: ignore[assignment]


async def test_a_busy_graph_never_stalls_the_reader() -> None:
    """The VAD takes frames in the reader's task only while its outputs fit downstream: with the next
    stage stuck and its inbox full, ``handle(audio)`` still returns at once (the reader goes on reading
    interrupts) and the frames meet the stated overflow policy of client audio, drop-oldest."""
    held_engine = _HeldEngine()
    specs = [
        build_stage({"name": "vad", "engine": "energy", "start_ms": 20, "end_ms": 200}, "pipeline[0]"),
        StageSpec(name="held", engine_name="held", kind="custom", engine=held_engine),
    ]

    async def send(message: Any) -> None:
        return None

    session = Session(m.Hello(protocol=1), specs, SessionDefaults(stage_queue_items=4), send)
    frame = tone(20)
    async with graph_running(session):
        for _ in range(200):  # 4 s of speech into a graph whose second stage handles nothing
            async with asyncio.timeout(1.0):
                await session.handle(m.Audio(data=frame))
            await asyncio.sleep(0)
        assert session.inboxes[1].full()
        assert session.audio_in_dropped > 0
        held_engine.stage.hold.set()

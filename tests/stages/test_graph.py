"""stages/graph.py on a fake session: wiring, entries, emit's two ways, inline hand-offs, audio's overflow policy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

from stages.base import BaseStage, Emitter, StageContext
from stages.graph import Graph
from stages.items import AudioChunk, AudioIn, Item, ReplyDelta, TurnDone
from stages.registry import StageSpec, build_stage
from tests.client import tone
from tests.stage_context import stage_context


class Host:
    """The session's stand-in: live turns, what it observed, and the task group ``spawn`` uses."""

    def __init__(self) -> None:
        self.live_turns: dict[int, Any] = {}
        self.observed: list[tuple[str, Item]] = []
        self.failures: list[tuple[str, int | None, Exception]] = []
        self.tg: asyncio.TaskGroup | None = None

    def observe(self, stage: str, item: Item) -> None:
        self.observed.append((stage, item))

    def stage_failed(self, stage: str, turn: int | None, exc: Exception) -> None:
        self.failures.append((stage, turn, exc))

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        assert self.tg is not None
        return self.tg.create_task(coro)


class Sink:
    """The outbox's stand-in: what reached the client side, with a condition to wait on."""

    def __init__(self, room: int = 1000) -> None:
        self.got: list[tuple[str, Any]] = []
        self.room = room
        self.changed = asyncio.Condition()

    async def _add(self, entry: tuple[str, Any]) -> None:
        async with self.changed:
            self.got.append(entry)
            self.changed.notify_all()

    async def put_message(self, stage: str, item: Item) -> None:
        await self._add((stage, item))

    async def put_audio(self, stage: str, chunk: AudioChunk) -> None:
        await self._add((stage, chunk))

    async def end_turn(self, turn: int) -> None:
        await self._add(("end", turn))

    def has_room(self, items: int) -> bool:
        return self.room >= items

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(2), self.changed:
            await self.changed.wait_for(lambda: len(self.got) >= count)


@contextlib.asynccontextmanager
async def running(graph: Graph, host: Host) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        host.tg = tg
        tasks = graph.start(tg, "test")
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()


def graph_of(specs: list[StageSpec], host: Host, sink: Sink, *, queue_items: int = 64, **ctx: Any) -> Graph:
    context: StageContext = stage_context(**ctx)
    names = [s.name for s in specs]
    return Graph(specs, context, host, sink, subscribed=names, audio_in_items=8, stage_queue_items=queue_items)


def test_entries_are_found_by_name_kind_and_audio() -> None:
    specs = [
        build_stage({"name": "vad", "engine": "energy"}, "p[0]"),
        build_stage({"name": "asr", "engine": "duration_asr"}, "p[1]"),
        build_stage({"name": "llm", "engine": "echo"}, "p[2]"),
        build_stage({"name": "tts", "engine": "tone"}, "p[3]"),
    ]
    graph = graph_of(specs, Host(), Sink())
    assert (graph.index_of("llm"), graph.index_of("nope")) == (2, None)
    assert (graph.index_of_kind("tts"), graph.index_of_kind("custom")) == (3, None)
    assert graph.audio_entry == 0
    assert graph.has_audio_out
    assert [type(i).__name__ for i in graph.inboxes] == ["Inbox"] * 4
    assert graph.inboxes[0].maxsize == 8  # raw audio: its own bound (drop-oldest)
    assert graph.inboxes[1].maxsize == 64


async def test_outputs_go_downstream_and_to_the_sink_and_turn_done_ends_the_turn() -> None:
    specs = [
        build_stage({"name": "llm", "engine": "echo", "delay_ms": 0}, "p[0]"),
        build_stage({"name": "tts", "engine": "tone", "word_ms": 20, "gap_ms": 0}, "p[1]"),
    ]
    host, sink = Host(), Sink()
    host.live_turns[1] = None
    graph = graph_of(specs, host, sink)
    async with running(graph, host):
        from stages.items import Transcription

        await graph.put(0, Transcription(1, "hi", final=True))
        await graph.put(0, TurnDone(1))
        async with asyncio.timeout(2), sink.changed:
            await sink.changed.wait_for(lambda: ("end", 1) in sink.got)
    replies = "".join(item.text for stage, item in sink.got if stage == "llm")
    assert replies == "You said: hi. I remember 0 messages."
    audio = [item for stage, item in sink.got if stage == "tts"]
    assert len(audio) == 7  # one 20 ms chunk per word
    assert sink.got[-1] == ("end", 1)
    assert {stage for stage, _ in host.observed} == {"llm", "tts"}


async def test_items_of_a_finished_turn_are_dropped() -> None:
    specs = [build_stage({"name": "first", "engine": "passthrough", "type": "text"}, "p[0]")]
    host, sink = Host(), Sink()
    host.live_turns[2] = None
    graph = graph_of(specs, host, sink)
    async with running(graph, host):
        await graph.put(0, ReplyDelta(1, "stale"))  # turn 1 is not live
        await graph.put(0, ReplyDelta(2, "fresh"))
        await sink.wait_for(1)
    assert [item.text for _, item in sink.got] == ["fresh"]


class _Gate(BaseStage):
    """An inline stage that records what it handles and can be held mid-item."""

    inline: ClassVar[bool] = True

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.active = 0
        self.max_active = 0
        self.hold = asyncio.Event()
        self.hold.set()
        self.entered = asyncio.Event()

    async def process(self, item: Item, out: Emitter) -> None:
        assert isinstance(item, ReplyDelta)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.seen.append(item.text)
        self.entered.set()
        await self.hold.wait()
        self.active -= 1
        await out.emit(item)


class _Factory:
    """A custom stage's factory that hands out one given stage."""

    def __init__(self, stage: Any, input_type: str = "text", output_type: str = "text") -> None:
        self.stage = stage
        self.input_type = input_type
        self.output_type = output_type

    def load(self, log: Any) -> None:
        return None

    def new_stage(self, ctx: StageContext) -> Any:
        return self.stage

    async def aclose(self) -> None:
        return None


async def test_inline_hand_off_keeps_order_and_one_item_at_a_time() -> None:
    gate = _Gate()
    specs = [
        build_stage({"name": "first", "engine": "passthrough", "type": "text"}, "p[0]"),
        StageSpec(name="gate", engine_name="gate", kind="custom", factory=_Factory(gate)),
    ]
    host, sink = Host(), Sink()
    host.live_turns[1] = None
    graph = graph_of(specs, host, sink)
    assert graph.runners[0].emitter.inline_next is graph.runners[1]
    async with running(graph, host):
        await asyncio.sleep(0)  # the runners reach their empty inboxes
        gate.hold.clear()
        await graph.put(0, ReplyDelta(1, "a"))  # first -> gate inline, held mid-item
        await asyncio.wait_for(gate.entered.wait(), 2)
        await graph.put(1, ReplyDelta(1, "b"))  # straight into gate's inbox while "a" is held
        await graph.put(0, ReplyDelta(1, "c"))  # gate is busy: queued behind "b"
        for _ in range(5):
            await asyncio.sleep(0)
        assert gate.seen == ["a"]
        gate.hold.set()
        await sink.wait_for(5)  # first passed "a" and "c" on, gate all three
    assert gate.seen == ["a", "b", "c"]
    assert [item.text for stage, item in sink.got if stage == "gate"] == ["a", "b", "c"]
    assert gate.max_active == 1


class _Held(BaseStage):
    """A non-interruptible stage stuck on its first item until ``hold`` is set."""

    def __init__(self) -> None:
        self.hold = asyncio.Event()

    async def process(self, item: Item, out: Emitter) -> None:
        await self.hold.wait()


async def test_a_busy_graph_never_stalls_the_reader() -> None:
    """The VAD takes frames in the reader's task only while its outputs fit downstream: with the next
    stage stuck and its inbox full, ``feed_audio`` still returns at once (the reader goes on reading
    interrupts) and the frames meet the stated overflow policy of client audio, drop-oldest."""
    held = _Held()
    specs = [
        build_stage({"name": "vad", "engine": "energy", "start_ms": 20, "end_ms": 200}, "p[0]"),
        StageSpec(name="held", engine_name="held", kind="custom", factory=_Factory(held, "speech", "speech")),
    ]
    host, sink = Host(), Sink()
    graph = graph_of(specs, host, sink, queue_items=4, new_turn=lambda: host.live_turns.setdefault(1, 1) and 1)
    frame = tone(20)
    async with running(graph, host):
        for i in range(200):  # 4 s of speech into a graph whose second stage handles nothing
            async with asyncio.timeout(1.0):
                await graph.feed_audio(0, AudioIn(frame, 16000, float(i)))
            await asyncio.sleep(0)
        assert graph.inboxes[1].full()
        assert graph.audio_in_dropped > 0
        held.hold.set()


async def test_a_failing_stage_ends_its_turn_not_the_graph() -> None:
    class Boom(BaseStage):
        async def process(self, item: Item, out: Emitter) -> None:
            raise RuntimeError("boom")

    specs = [StageSpec(name="boom", engine_name="boom", kind="custom", factory=_Factory(Boom()))]
    host, sink = Host(), Sink()
    host.live_turns[1] = None
    graph = graph_of(specs, host, sink)
    async with running(graph, host):
        await graph.put(0, ReplyDelta(1, "x"))
        await graph.put(0, ReplyDelta(1, "y"))  # the failed turn's later items are skipped
        await graph.put(0, TurnDone(1))
        await sink.wait_for(1)
    assert [(stage, turn) for stage, turn, _ in host.failures] == [("boom", 1)]
    assert sink.got == [("end", 1)]  # the turn still ends downstream


@pytest.mark.parametrize("subscribed", [True, False])
async def test_only_subscribed_stages_reach_the_sink(subscribed: bool) -> None:
    specs = [build_stage({"name": "first", "engine": "passthrough", "type": "text"}, "p[0]")]
    host, sink = Host(), Sink()
    host.live_turns[1] = None
    graph = Graph(
        specs,
        stage_context(),
        host,
        sink,
        subscribed=["first"] if subscribed else [],
        audio_in_items=8,
        stage_queue_items=8,
    )
    async with running(graph, host):
        await graph.put(0, ReplyDelta(1, "x"))
        await graph.put(0, TurnDone(1))
        await sink.wait_for(1)
    assert [stage for stage, _ in sink.got] == (["first", "end"] if subscribed else ["end"])

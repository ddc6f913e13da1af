"""server/outbox.py: one writer; control first, stage messages in order, audio from the playhead, turn_end last."""

from __future__ import annotations

import asyncio
from typing import Any

from server.outbox import Outbox
from server.playhead import Playhead
from stages.items import AudioChunk, ReplyDelta, Transcription
from tests.waiting import stays_false
from transports import messages as m

CHUNK = b"\x01\x00" * 320  # 20 ms at 16 kHz


class Socket:
    """The socket's stand-in: records what the writer sent, and lets a test wait for a message."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self._more = asyncio.Condition()

    async def send(self, message: Any) -> None:
        async with self._more:
            self.sent.append(message)
            self._more.notify_all()

    async def wait_for(self, kind: type[Any]) -> None:
        async with asyncio.timeout(2), self._more:
            await self._more.wait_for(lambda: any(isinstance(x, kind) for x in self.sent))


def outbox(live: dict[int, Any], socket: Socket, *, lead_ms: float = 10_000) -> Outbox:
    head = Playhead(rate_hz=16000, lead_ms=lead_ms, max_chunks=64, is_live=live.__contains__)

    def finish(turn: int) -> list[Any]:
        live.pop(turn, None)
        return [m.TurnEnd(turn=turn)]

    return Outbox(socket.send, playhead=head, live_turns=live, finish_turn=finish, max_items=64)


async def test_control_first_then_messages_then_audio_then_turn_end() -> None:
    live: dict[int, Any] = {1: None}
    socket = Socket()
    box = outbox(live, socket)
    await box.put_message("llm", ReplyDelta(1, "hi"))
    await box.put_audio("tts", AudioChunk(turn=1, pcm=CHUNK, rate_hz=16000))
    await box.end_turn(1)
    box.control(m.Pong(id=7))
    writer = asyncio.create_task(box.run())
    try:
        await socket.wait_for(m.TurnEnd)
    finally:
        writer.cancel()
    assert [type(x) for x in socket.sent] == [m.Pong, m.Reply, m.AudioOut, m.TurnEnd]
    assert socket.sent[1] == m.Reply(stage="llm", turn=1, text="hi", final=False)
    assert socket.sent[2] == m.AudioOut(stage="tts", turn=1, seq=0, data=CHUNK)


async def test_nothing_of_an_interrupted_turn_leaves() -> None:
    live: dict[int, Any] = {1: None, 2: None}
    socket = Socket()
    box = outbox(live, socket)
    await box.put_message("asr", Transcription(1, "stale", final=True))
    for _ in range(3):
        await box.put_audio("tts", AudioChunk(turn=1, pcm=CHUNK, rate_hz=16000))
    await box.end_turn(1)
    await box.put_message("asr", Transcription(2, "fresh", final=True))
    await box.end_turn(2)
    del live[1]
    box.drop_turn(1, 0.0)
    writer = asyncio.create_task(box.run())
    try:
        await socket.wait_for(m.TurnEnd)
    finally:
        writer.cancel()
    assert socket.sent == [m.Transcript(stage="asr", turn=2, text="fresh", final=True), m.TurnEnd(turn=2)]


async def test_droppable_control_messages_are_dropped_when_the_lane_is_full() -> None:
    socket = Socket()
    box = outbox({}, socket)
    for i in range(300):
        box.control(m.Pong(id=i), droppable=True)
    box.control(m.Error(code="x", message="kept", fatal=True))  # never dropped
    writer = asyncio.create_task(box.run())
    try:
        await socket.wait_for(m.Error)
    finally:
        writer.cancel()
    assert [x.id for x in socket.sent[:-1]] == list(range(256))


async def test_has_room_counts_both_lanes() -> None:
    live: dict[int, Any] = {1: None}
    box = outbox(live, Socket())
    assert box.has_room(64)
    await box.put_audio("tts", AudioChunk(turn=1, pcm=CHUNK, rate_hz=16000))
    assert not box.has_room(64)
    assert box.has_room(63)


async def test_flush_control_does_not_wait_for_a_writer_that_has_stopped() -> None:
    box = outbox({}, Socket())  # its writer never runs: as when the session ended just before a drain
    box.control(m.Error(code="going_away", message="bye", fatal=True))
    waiting = asyncio.create_task(box.flush_control())
    await stays_false(waiting.done, 0.05)  # it waits for the writer
    box.stop()
    async with asyncio.timeout(1):
        await waiting
    async with asyncio.timeout(1):
        await box.flush_control()  # and any later flush returns at once


async def test_the_playhead_hears_when_the_client_was_told_of_a_pause() -> None:
    """agent_paused / agent_resumed leaving the writer is when the client holds and plays on (the echo
    canceller lays its reference by it)."""
    live: dict[int, Any] = {1: None}
    socket = Socket()
    box = outbox(live, socket)
    told: list[str] = []
    box.playhead.listen(
        on_release=lambda _r: None,
        on_cut=lambda _now: None,
        on_pause=lambda _at: told.append("paused"),
        on_resume=lambda _at, _gap: told.append("resumed"),
    )
    box.playhead.pause(box.playhead.clock())
    box.control(m.AgentPaused(turn=1))
    writer = asyncio.create_task(box.run())
    try:
        await socket.wait_for(m.AgentPaused)
        assert told == ["paused"]
        box.playhead.resume(box.playhead.clock())
        assert told == ["paused"]  # decided, not told yet
        box.control(m.AgentResumed(turn=1))
        await socket.wait_for(m.AgentResumed)
    finally:
        writer.cancel()
    assert told == ["paused", "resumed"]

"""server/outbox.py: the playout clock paces agent audio in real time without drifting."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from server.outbox import CLOCK_SLACK_S, Outbox
from server.turns import Turn
from stages.items import AudioChunk
from transports import messages as m

pytestmark = pytest.mark.asyncio
CHUNK = b"\0\0" * 320  # 20 ms at 16 kHz


class Sink:
    """The socket's stand-in: records (time, message) and lets a test wait for the n-th message."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, Any]] = []
        self._more = asyncio.Event()

    async def send(self, message: Any) -> None:
        self.sent.append((time.monotonic(), message))
        self._more.set()

    async def wait_for(self, count: int) -> None:
        while len(self.sent) < count:
            self._more.clear()
            await asyncio.wait_for(self._more.wait(), 2)


async def _outbox(lead_ms: float) -> tuple[Outbox, Sink, asyncio.Task[None]]:
    sink = Sink()
    outbox = Outbox(sink.send, turns={1: Turn(1)}, finish_turn=lambda _turn: [], lead_ms=lead_ms, max_items=64)
    return outbox, sink, asyncio.create_task(outbox.run())


async def test_without_lead_chunks_leave_one_chunk_apart_not_two() -> None:
    outbox, sink, task = await _outbox(lead_ms=0)
    try:
        for _ in range(10):
            await outbox.put_audio("tts", AudioChunk(1, CHUNK, 16000))
        await sink.wait_for(10)
    finally:
        task.cancel()
    sent = sink.sent
    assert [msg.seq for _, msg in sent] == list(range(10))
    spread_s = sent[-1][0] - sent[0][0]
    assert spread_s >= 0.17
    assert spread_s < 0.27  # 9 x 20 ms; sleeping one chunk too long each time gave 9 x 40 ms


async def test_a_slightly_late_send_keeps_the_clock_a_real_gap_restarts_it() -> None:
    outbox, sink, task = await _outbox(lead_ms=40)
    try:
        late_by_s = CLOCK_SLACK_S / 2
        outbox.playhead_at = time.monotonic() - late_by_s
        kept = outbox.playhead_at
        await outbox.put_audio("tts", AudioChunk(1, CHUNK, 16000))
        await sink.wait_for(1)
        assert outbox.playhead_at == pytest.approx(kept + 0.020, abs=1e-4)  # not now + 20 ms: no drift
        outbox.playhead_at = time.monotonic() - 0.2  # the client ran dry 200 ms ago
        before = time.monotonic()
        await outbox.put_audio("tts", AudioChunk(1, CHUNK, 16000))
        await sink.wait_for(2)
        assert outbox.playhead_at >= before + 0.020
    finally:
        task.cancel()
    assert all(isinstance(msg, m.AudioOut) for _, msg in sink.sent)

"""The session's last gate before the socket: three lanes, one writer, and the playout clock.

- control: ``interrupted``, ``error``, ``pong``; sent first.
- messages: stage outputs other than audio (vad, transcript, reply), in order, unpaced.
- audio: agent audio paced to real time with ``lead_ms`` of lead, plus each turn's end marker,
  so ``turn_end`` leaves after the turn's last chunk.
Nothing of a turn leaves once the turn is over (``is_live`` is checked right before each send).
The message and audio lanes are bounded: a slow reader blocks the stages, never grows memory.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from server.metrics import QUEUE_DROPS_TOTAL
from server.turns import Turn
from stages.items import AudioChunk
from transports import messages as m

Send = Callable[[Any], Awaitable[None]]
_END = object()  # audio-lane marker: the turn's last stage is done
# A send up to this late keeps the playout clock where it was (client jitter buffers absorb it);
# later than this, the client ran dry and playback restarts from now.
CLOCK_SLACK_S = 0.010


class _Lane:
    """A bounded FIFO whose ``put`` waits for room (the overflow policy is: block the producer)."""

    __slots__ = ("_room", "items", "max_items")

    def __init__(self, max_items: int) -> None:
        self.items: deque[Any] = deque()
        self.max_items = max_items
        self._room = asyncio.Event()
        self._room.set()

    def try_put(self, entry: Any) -> bool:
        if len(self.items) >= self.max_items:
            return False
        self.items.append(entry)
        return True

    async def put(self, entry: Any) -> None:
        while len(self.items) >= self.max_items:
            self._room.clear()
            await self._room.wait()
        self.items.append(entry)

    def popleft(self) -> Any:
        entry = self.items.popleft()
        if len(self.items) < self.max_items:
            self._room.set()
        return entry

    def purge(self, turn: int) -> int:
        before = len(self.items)
        self.items = deque(e for e in self.items if e[1] != turn)
        if len(self.items) < self.max_items:
            self._room.set()
        return before - len(self.items)


class Outbox:
    def __init__(
        self,
        send: Send,
        *,
        turns: dict[int, Turn],
        finish_turn: Callable[[int], list[Any]],
        lead_ms: float,
        max_items: int,
        max_control: int = 256,
    ) -> None:
        self._send = send
        self._turns = turns
        self._finish_turn = finish_turn
        self.lead_s = lead_ms / 1000.0
        self._control: deque[Any] = deque()
        self._max_control = max_control
        self._messages = _Lane(max_items)
        self._audio = _Lane(max_items)
        self._wakeup = asyncio.Event()
        self.playhead_at = 0.0  # monotonic time at which all audio sent so far has played out

    # ------------------------------------------------------------ producers

    def control(self, message: Any, *, droppable: bool = False) -> None:
        """Queue a control message. ``droppable`` ones (pong) are dropped when the lane is full."""
        if droppable and len(self._control) >= self._max_control:
            QUEUE_DROPS_TOTAL.inc(edge="outbox_control")
            return
        self._control.append(message)
        self._wakeup.set()

    async def put_message(self, stage: str, turn: int | None, item: Any) -> None:
        """A stage output for the client; ``item.to_message(stage)`` is built when it is sent (None: skipped)."""
        entry = (stage, turn, item)
        if not self._messages.try_put(entry):
            await self._messages.put(entry)
        self._wakeup.set()

    async def put_audio(self, stage: str, chunk: AudioChunk) -> None:
        entry = (stage, chunk.turn, chunk)
        if not self._audio.try_put(entry):
            await self._audio.put(entry)
        self._wakeup.set()

    async def put_end(self, turn: int) -> None:
        await self._audio.put((None, turn, _END))
        self._wakeup.set()

    def has_room(self, items: int) -> bool:
        """Whether ``items`` more messages and chunks fit without waiting."""
        lanes = (self._messages, self._audio)
        return all(lane.max_items - len(lane.items) >= items for lane in lanes)

    def drop_turn(self, turn: int) -> None:
        """Forget everything queued for ``turn`` (interrupted); the client flushes its buffer, so does the clock."""
        self._messages.purge(turn)
        self._audio.purge(turn)
        self.playhead_at = time.monotonic()
        self._wakeup.set()

    # ------------------------------------------------------------ the writer

    async def _sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``; new work in any lane wakes us early."""
        handle = asyncio.get_running_loop().call_later(seconds, self._wakeup.set)
        try:
            await self._wakeup.wait()
        finally:
            handle.cancel()

    async def run(self) -> None:
        """The only writer of the session's socket. Cancellation-safe: a message is sent whole or not at all."""
        turns = self._turns
        while True:
            self._wakeup.clear()  # cleared before looking, so no put between look and wait is missed
            if self._control:
                await self._send(self._control.popleft())
                continue
            if self._messages.items:
                stage, turn, item = self._messages.popleft()
                if turn is None or turn in turns:
                    message = item.to_message(stage)
                    if message is not None:
                        await self._send(message)
                continue
            if self._audio.items:
                stage, turn, item = self._audio.items[0]
                if turn not in turns:
                    self._audio.popleft()
                    continue
                if item is _END:
                    self._audio.popleft()
                    for message in self._finish_turn(turn):
                        await self._send(message)
                    continue
                now = time.monotonic()
                duration_s = item.duration_ms / 1000.0
                ahead_s = self.playhead_at - now
                if ahead_s > 0 and ahead_s + duration_s > self.lead_s:
                    # until the chunk fits in the lead, or the client's buffer runs dry (lead < one chunk)
                    await self._sleep(min(ahead_s, ahead_s + duration_s - self.lead_s))
                    continue
                self._audio.popleft()
                state = turns[turn]
                message = m.AudioOut(stage=stage, turn=turn, seq=state.seq, data=item.pcm)
                # The clock runs on through a send that is a little late (a timer's wake-up, a busy loop):
                # restarting it from ``now`` each time made it drift behind real time chunk by chunk.
                late_s = now - self.playhead_at
                self.playhead_at = (now if late_s > CLOCK_SLACK_S else self.playhead_at) + duration_s
                state.audio_sent(item.duration_ms, item.text, item.text_ms, now)
                await self._send(message)
                continue
            await self._wakeup.wait()

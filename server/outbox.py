"""The session's last gate before the socket: one writer, control first, then stage messages, then paced audio.

- control: ``interrupted``, ``error``, ``pong``, ``webrtc_answer``; sent first (bounded: droppable ones
  are dropped when full).
- messages: stage outputs other than audio (vad, transcript, reply), in order, unpaced.
- audio: pulled from the playhead when it says a chunk is due (``lead_ms`` ahead of playback); a turn
  ends (metrics, ``turn_end``) once its last chunk has left, so ``turn_end`` follows its audio.
Nothing of a turn leaves once the turn is over (checked right before each send, and in the playhead).
Nothing at all leaves after a fatal ``error``: the connection ends with it (what is queued is logged for a resume).
The message lane and the playhead's queue are bounded: a slow reader blocks the stages, never grows memory.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from server.outbound import audio_message, to_message
from server.playhead import Playhead
from stages.inbox import Inbox
from stages.items import AudioChunk, Item
from transports import messages as m
from vocab.metrics import QUEUE_DROPS_TOTAL


class Outbox:
    """Implements the graph's ``Sink``; ``run`` is the only writer of the session's socket."""

    def __init__(
        self,
        send: m.Send,
        *,
        playhead: Playhead,
        live_turns: Mapping[int, Any],
        finish_turn: Callable[[int], list[Any]],
        max_items: int,
        max_control: int = 256,
    ) -> None:
        self._send = send
        self.playhead = playhead
        self._turns = live_turns
        self._finish_turn = finish_turn
        self._control: deque[Any] = deque()
        self._max_control = max_control
        self._control_queued = self._control_sent = 0  # counts, for ``flush_control``
        self._control_progress = asyncio.Event()
        self._stopped = False  # the writer has ended: what is still queued will never be sent
        self._messages: Inbox[tuple[str, int | None, Item]] = Inbox(max_items)
        self._wakeup = asyncio.Event()
        playhead.wake = self._wakeup.set

    # ------------------------------------------------------------ producers

    def control(self, message: Any, *, droppable: bool = False) -> None:
        """Queue a control message. ``droppable`` ones (pong, errors) are dropped when the lane is full."""
        if droppable and len(self._control) >= self._max_control:
            QUEUE_DROPS_TOTAL.inc(edge="outbox_control")
            return
        self._control.append(message)
        self._control_queued += 1
        self._wakeup.set()

    async def flush_control(self) -> None:
        """Wait until every control message queued so far has been sent (callers bound the wait)."""
        target = self._control_queued
        while self._control_sent < target and not self._stopped:
            self._control_progress.clear()
            await self._control_progress.wait()

    async def put_message(self, stage: str, item: Item) -> None:
        """A stage output for the client; the wire message is built when it is sent (``server/outbound.py``)."""
        entry = (stage, item.turn, item)
        if not self._messages.try_put(entry):
            await self._messages.put(entry)
        self._wakeup.set()

    async def put_audio(self, stage: str, chunk: AudioChunk) -> None:
        await self.playhead.put(stage, chunk)

    async def end_turn(self, turn: int) -> None:
        await self.playhead.put_end(turn)

    def has_room(self, items: int) -> bool:
        """Whether ``items`` more messages and chunks fit without waiting."""
        return self._messages.room() >= items and self.playhead.room() >= items

    def drop_turn(self, turn: int, now: float) -> None:
        """Forget everything queued for ``turn`` (interrupted)."""
        self._messages.purge(lambda entry: entry[1] == turn)
        self.playhead.drop_turn(turn, now)

    def stop(self) -> None:
        """The writer has ended with its session: ``flush_control`` no longer waits for it (a drain that
        told a session ``going_away`` as its client left would otherwise wait out its whole timeout)."""
        self._stopped = True
        self._control_progress.set()

    def take_unsent(self) -> list[Any]:
        """What the writer had not sent yet, in its order, audio left out (the socket is gone: for the log)."""
        out = list(self._control)
        self._control.clear()
        self._control_sent += len(out)
        self._control_progress.set()
        while not self._messages.empty():
            stage, turn, item = self._messages.get_nowait()
            message = to_message(stage, item) if turn is None or turn in self._turns else None
            if message is not None:
                out.append(message)
        return out

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
        playhead = self.playhead
        while True:
            self._wakeup.clear()  # cleared before looking, so no put between look and wait is missed
            if self._control:
                message = self._control.popleft()
                await self._send(message)
                if type(message) is m.AgentPaused:
                    playhead.told_paused(playhead.clock())
                elif type(message) is m.AgentResumed:
                    playhead.told_resumed(playhead.clock())
                self._control_sent += 1
                self._control_progress.set()
                if type(message) is m.Error and message.fatal:
                    return  # the connection ends here: what is still queued waits for a resume's replay
                continue
            if not self._messages.empty():
                stage, turn, item = self._messages.get_nowait()
                if turn is None or turn in turns:
                    message = to_message(stage, item)
                    if message is not None:
                        await self._send(message)
                continue
            if playhead.ended:
                for message in self._finish_turn(playhead.ended.pop(0)):
                    await self._send(message)
                continue
            now = playhead.clock()
            wait_s = playhead.due_in(now)
            if wait_s is None:
                await self._wakeup.wait()
            elif wait_s > 0:
                await self._sleep(wait_s)
            else:
                released = playhead.release(now)
                if released is not None and released.turn in turns:
                    await self._send(audio_message(released))

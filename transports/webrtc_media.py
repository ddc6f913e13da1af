"""Media of a WebRTC call-in: the agent's outbound audio track and the reader of the caller's track.

``AgentAudioTrack`` is pull-based like every aiortc track: ``recv()`` returns the next 20 ms frame on
a real-time clock, taken from a bounded queue of the session's audio, or silence when there is none.
``read_caller_audio`` always drains the remote track (so aiortc's receive queue never grows) and
hands PCM16 at the session's input rate to a callback.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections import deque
from collections.abc import Callable

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.metrics import QUEUE_DROPS_TOTAL

OnPlayed = Callable[[int, float], None]
# A loop that fell this far behind the frame clock restarts it instead of sending a burst.
_MAX_LATE_S = 0.5
_KEEP_TURNS = 8  # played counts kept for the most recent turns only


class AgentAudioTrack(MediaStreamTrack):
    """The agent's voice as an aiortc audio track (PCM16 mono at ``rate_hz``, ``frame_ms`` frames).

    ``push`` queues a turn's audio (bounded by ``max_queue_ms``; overflow drops the oldest audio,
    counted as ``webrtc_audio_out``), ``drop_turn`` forgets a turn's queued audio at once.
    ``on_played(turn, ms)`` is called from ``recv`` with each turn's total audio handed to the sender.
    """

    kind = "audio"

    def __init__(
        self, rate_hz: int, *, frame_ms: int = 20, max_queue_ms: float = 2000.0, on_played: OnPlayed | None = None
    ) -> None:
        super().__init__()
        self.rate_hz = rate_hz
        self.frame_ms = frame_ms
        self.frame_bytes = rate_hz * frame_ms // 1000 * 2
        self.max_queue_bytes = int(rate_hz * max_queue_ms / 1000) * 2
        self._chunks: deque[tuple[int, bytes]] = deque()  # (turn, PCM16)
        self._offset = 0  # bytes of the first chunk already sent
        self._queued_bytes = 0
        self._on_played = on_played
        self._played_bytes: dict[int, int] = {}
        self._clock_start: float | None = None
        self._pts = 0
        self.frames_sent = 0
        self.voiced_frames_sent = 0
        self.last_voiced_at: float | None = None  # monotonic time the last frame with agent audio left
        self.dropped_bytes = 0

    @property
    def queued_ms(self) -> float:
        return self._queued_bytes * 500.0 / self.rate_hz

    def push(self, turn: int, pcm: bytes) -> None:
        if not pcm:
            return
        self._chunks.append((turn, pcm))
        self._queued_bytes += len(pcm)
        while self._queued_bytes > self.max_queue_bytes and len(self._chunks) > 1:
            _, old = self._chunks.popleft()
            self._queued_bytes -= len(old) - self._offset
            self.dropped_bytes += len(old) - self._offset
            self._offset = 0
            QUEUE_DROPS_TOTAL.inc(edge="webrtc_audio_out")

    def drop_turn(self, turn: int) -> None:
        """Barge-in: nothing queued of ``turn`` is sent from now on (the next frame is silence or later audio)."""
        if self._chunks and self._chunks[0][0] == turn:
            self._offset = 0
        self._chunks = deque(c for c in self._chunks if c[0] != turn)
        self._queued_bytes = sum(len(c[1]) for c in self._chunks) - self._offset
        self._played_bytes.pop(turn, None)

    def _take_frame(self) -> tuple[bytes, dict[int, int]]:
        """The next frame's PCM (zero-padded) and how many bytes of it each turn gave."""
        parts: list[bytes] = []
        given: dict[int, int] = {}
        need = self.frame_bytes
        while need and self._chunks:
            turn, pcm = self._chunks[0]
            piece = pcm[self._offset : self._offset + need]
            parts.append(piece)
            given[turn] = given.get(turn, 0) + len(piece)
            need -= len(piece)
            self._offset += len(piece)
            self._queued_bytes -= len(piece)
            if self._offset >= len(pcm):
                self._chunks.popleft()
                self._offset = 0
        if need:
            parts.append(bytes(need))
        return b"".join(parts), given

    async def recv(self) -> av.AudioFrame:
        """The next frame, on time. Cancellation-safe: a cancelled call has taken nothing from the queue."""
        if self.readyState != "live":
            raise MediaStreamError
        samples = self.frame_bytes // 2
        now = time.monotonic()
        if self._clock_start is None or now - (self._clock_start + self._pts / self.rate_hz) > _MAX_LATE_S:
            self._clock_start = now - self._pts / self.rate_hz
        else:
            wait_s = self._clock_start + self._pts / self.rate_hz - now
            if wait_s > 0:
                await asyncio.sleep(wait_s)
        if self.readyState != "live":
            raise MediaStreamError
        pcm, given = self._take_frame()
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate_hz
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, self.rate_hz)
        self._pts += samples
        self.frames_sent += 1
        if given:
            self.voiced_frames_sent += 1
            self.last_voiced_at = time.monotonic()
            for turn, n in given.items():
                total = self._played_bytes.get(turn, 0) + n
                self._played_bytes[turn] = total
                if len(self._played_bytes) > _KEEP_TURNS:
                    del self._played_bytes[min(self._played_bytes)]
                if self._on_played is not None:
                    self._on_played(turn, total * 500.0 / self.rate_hz)
        return frame



async def read_caller_audio(track: MediaStreamTrack, rate_hz: int, deliver: Callable[[bytes], None]) -> None:
    """Read ``track`` until it ends, delivering PCM16 LE mono at ``rate_hz`` (resampled with ``av``).

    Every frame is read even when nobody needs it, so aiortc's unbounded receive queue stays empty.
    """
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate_hz)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if not isinstance(frame, av.AudioFrame):
            continue
        frame.pts = None  # packet loss makes gaps; the resampler needs no timeline here
        for out in resampler.resample(frame):
            pcm = out.to_ndarray().astype("<i2", copy=False).tobytes()
            if pcm:
                deliver(pcm)

"""Media of a WebRTC call: the agent's outbound audio track and the reader of the caller's track.

``AgentAudioTrack`` is pull-based like every aiortc track: ``recv()`` returns the next 20 ms frame when
the session's playout clock says it is due, pulled from the session's playhead (a ``FrameSource``), or
silence when there is nothing to play. Pacing lives in the playhead; the track only waits and wraps.
``read_caller_audio`` always drains the remote track (so aiortc's receive queue never grows) and hands
PCM16 at the session's input rate to a callback.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from typing import Protocol

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack


class FrameSource(Protocol):
    """The session's playout clock as a track sees it (``server/playhead.py`` implements it)."""

    rate_hz: int
    frame_ms: int

    def frame_due_at(self, now: float) -> float:
        """Monotonic time the next frame is due."""
        ...

    def pull_frame(self, now: float) -> bytes:
        """The next frame's PCM16 LE mono (silence when nothing is queued)."""
        ...


class AgentAudioTrack(MediaStreamTrack):
    """The agent's voice as an aiortc audio track (PCM16 mono at the source's rate, ``frame_ms`` frames)."""

    kind = "audio"

    def __init__(self, source: FrameSource) -> None:
        super().__init__()
        self.source = source
        self._pts = 0
        self.last_voiced_at: float | None = None  # monotonic time the last frame with agent audio left

    async def recv(self) -> av.AudioFrame:
        """The next frame, on time. Cancellation-safe: a cancelled call has taken nothing from the source."""
        if self.readyState != "live":
            raise MediaStreamError
        wait_s = self.source.frame_due_at(time.monotonic()) - time.monotonic()
        if wait_s > 0:
            await asyncio.sleep(wait_s)
        if self.readyState != "live":
            raise MediaStreamError
        pcm = self.source.pull_frame(time.monotonic())
        if pcm.count(0) != len(pcm):
            self.last_voiced_at = time.monotonic()
        rate = self.source.rate_hz
        frame = av.AudioFrame.from_ndarray(np.frombuffer(pcm, dtype="<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, rate)
        self._pts += len(pcm) // 2
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

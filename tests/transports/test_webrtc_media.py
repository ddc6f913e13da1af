"""transports/webrtc_media.py: the agent's track pulls 20 ms frames from the playout clock, silence when idle."""

from __future__ import annotations

import pytest

from server.playhead import Playhead
from stages.items import AudioChunk
from tests.embedded import require_models

require_models("av", "aiortc")

from aiortc.mediastreams import MediaStreamError  # noqa: E402

from transports.webrtc_media import AgentAudioTrack  # noqa: E402


class NoWait:
    """A frame source whose every frame is due now; it hands out numbered frames."""

    rate_hz = 16000
    frame_ms = 20

    def __init__(self) -> None:
        self.pulled = 0

    def frame_due_at(self, now: float) -> float:
        return now

    def pull_frame(self, now: float) -> bytes:
        self.pulled += 1
        return bytes([self.pulled % 256, 0]) * 320


async def test_frames_carry_the_sources_audio_with_increasing_timestamps() -> None:
    source = NoWait()
    track = AgentAudioTrack(source)
    frames = [await track.recv() for _ in range(3)]
    assert [f.pts for f in frames] == [0, 320, 640]
    assert all(f.sample_rate == 16000 and f.samples == 320 for f in frames)
    assert [f.to_ndarray()[0, 0] for f in frames] == [1, 2, 3]
    assert track.last_voiced_at is not None


async def test_a_stopped_track_ends() -> None:
    track = AgentAudioTrack(NoWait())
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_the_track_plays_the_playheads_audio_then_silence() -> None:
    live = {1}
    head = Playhead(rate_hz=16000, lead_ms=200, max_chunks=8, is_live=live.__contains__)
    head.attach_track(True)
    await head.put("tts", AudioChunk(turn=1, pcm=b"\x10\x00" * 320, rate_hz=16000))
    await head.put_end(1)
    track = AgentAudioTrack(head)
    voiced = await track.recv()
    quiet = await track.recv()
    assert voiced.to_ndarray().max() == 16
    assert quiet.to_ndarray().max() == 0
    assert list(head.ended) == [1]
    timeline = head.timeline(1)
    assert timeline is not None
    assert timeline.released_ms == 20.0

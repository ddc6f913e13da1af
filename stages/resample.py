"""PCM16 mono sample-rate conversion between client rates and engine rates, with FFmpeg's resampler (``av``).

Stateful per stream: feed pieces of any length to ``process`` and call ``flush`` at the end of the
stream for the filter's tail. No hand-written interpolation.
"""

from __future__ import annotations

import av
import numpy as np


class Resampler:
    def __init__(self, from_hz: int, to_hz: int) -> None:
        self.from_hz = from_hz
        self.to_hz = to_hz
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=to_hz)
        self._pts = 0

    def _frames_to_bytes(self, frames: list[av.AudioFrame]) -> bytes:
        return b"".join(frame.to_ndarray().astype("<i2").tobytes() for frame in frames)

    def process(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.from_hz
        frame.pts = self._pts
        self._pts += samples.shape[1]
        return self._frames_to_bytes(self._resampler.resample(frame))

    def flush(self) -> bytes:
        return self._frames_to_bytes(self._resampler.resample(None))


def resample(pcm: bytes, from_hz: int, to_hz: int) -> bytes:
    """One-shot conversion of a whole buffer."""
    if from_hz == to_hz:
        return pcm
    resampler = Resampler(from_hz, to_hz)
    return resampler.process(pcm) + resampler.flush()

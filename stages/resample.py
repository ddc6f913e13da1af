"""PCM16 LE mono sample-rate conversion between client rates and engine rates, with FFmpeg's swresample (``av``).

Stateful per stream: feed pieces of any length to ``process`` and call ``flush`` once at the end of
the stream for the filter's tail (about 1 ms). Chunked output equals one-shot output sample for
sample (tested), so stages may resample 20 ms frames as they arrive. No hand-written interpolation.
Cost: about 0.1 ms per 20 ms frame on this machine (60 s of 48 kHz audio in ~0.3 s).
"""

from __future__ import annotations

import av
import numpy as np


class Resampler:
    """One stream's converter from ``from_hz`` to ``to_hz``; not thread-safe (one per stream)."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        if from_hz <= 0 or to_hz <= 0:
            raise ValueError(f"sample rates must be > 0, got {from_hz} -> {to_hz}")
        self.from_hz = from_hz
        self.to_hz = to_hz
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=to_hz) if from_hz != to_hz else None
        self._pts = 0

    @staticmethod
    def _to_bytes(frames: list[av.AudioFrame]) -> bytes:
        return b"".join(frame.to_ndarray().astype("<i2", copy=False).tobytes() for frame in frames)

    def process(self, pcm: bytes) -> bytes:
        """Converted audio for ``pcm`` (whole samples); may hold back a few samples until the next call."""
        if self._resampler is None or not pcm:
            return pcm
        samples = np.frombuffer(pcm, dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.from_hz
        frame.pts = self._pts
        self._pts += samples.shape[1]
        return self._to_bytes(self._resampler.resample(frame))

    def flush(self) -> bytes:
        """The samples still held in the filter; the stream is over after this."""
        if self._resampler is None:
            return b""
        return self._to_bytes(self._resampler.resample(None))


def resample(pcm: bytes, from_hz: int, to_hz: int) -> bytes:
    """One-shot conversion of a whole buffer."""
    if from_hz == to_hz:
        return pcm
    resampler = Resampler(from_hz, to_hz)
    return resampler.process(pcm) + resampler.flush()

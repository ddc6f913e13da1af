"""PCM16 mono sample-rate conversion between client rates and engine rates (``av``'s resampler).

Placeholder until the embedded-stack work lands: ``Resampler(from_hz, to_hz)`` with ``process(pcm)
-> pcm`` and ``flush() -> pcm``; stateful per stream.
"""

from __future__ import annotations


class Resampler:
    def __init__(self, from_hz: int, to_hz: int) -> None:
        raise NotImplementedError(f"resampling {from_hz} -> {to_hz} Hz needs the 'av' package")

    def process(self, pcm: bytes) -> bytes:
        raise NotImplementedError

    def flush(self) -> bytes:
        raise NotImplementedError

"""``webrtcvad`` backend for the VAD stage: Google's WebRTC voice detector on 10/20/30 ms frames."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import webrtcvad

from stages.base import NothingToLoad
from vocab.options import require


class WebrtcVad(NothingToLoad):
    kind: ClassVar[str] = "vad"
    NATIVE_RATES_HZ: ClassVar[tuple[int, ...]] = (8000, 16000, 32000, 48000)

    @dataclass(frozen=True, slots=True)
    class Options:
        aggressiveness: int = 2  # 0 (keeps most audio as speech) .. 3 (strictest)
        frame_ms: int = 20

        def validate(self) -> None:
            require(0 <= self.aggressiveness <= 3, "aggressiveness", "must be 0..3")
            require(self.frame_ms in (10, 20, 30), "frame_ms", "must be 10, 20 or 30")

    def __init__(self, options: WebrtcVad.Options) -> None:
        self.aggressiveness = options.aggressiveness
        self.frame_ms = options.frame_ms
        self.rate_hz: int | None = 16000  # where other rates (24 kHz) are resampled to

    def supports_rate(self, rate_hz: int) -> bool:
        return rate_hz in self.NATIVE_RATES_HZ

    def new_detector(self, rate_hz: int, threshold: float | None = None) -> Callable[[bytes], bool]:
        """``threshold`` 0..1 maps to the aggressiveness: below 0.25 -> 0, ..., 0.75 and above -> 3."""
        mode = self.aggressiveness if threshold is None else min(3, int(threshold * 4))
        vad = webrtcvad.Vad(mode)
        return lambda frame: bool(vad.is_speech(frame, rate_hz))

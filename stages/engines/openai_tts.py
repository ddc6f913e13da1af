"""OpenAI-compatible speech as a TTS backend: ``POST /v1/audio/speech``, the audio streamed in the body.

``response_format: pcm`` is raw PCM16 mono at 24 kHz (OpenAI's fixed rate; ``sample_rate_hz`` for
servers that differ); ``wav`` carries its rate in the header, which the backend then adopts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from stages.base import StageContext
from stages.engines.http_common import HttpTtsBackend
from stages.upstream import HttpOptions
from vocab.options import require


class OpenAiTts(HttpTtsBackend):
    kind: ClassVar[str] = "tts"
    backend_name = "openai_tts"

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Options(HttpOptions):
        model: str = "tts-1"
        voice: str = "alloy"  # the session's ``voice`` overrides it
        path: str = "/v1/audio/speech"
        response_format: Literal["pcm", "wav"] = "pcm"
        sample_rate_hz: int = 24000  # rate of ``pcm`` output
        speed: float | None = None
        instructions: str | None = None  # gpt-4o-mini-tts: how to speak

        def validate(self) -> None:
            HttpOptions.validate(self)
            require(bool(self.model), "model", "must not be empty")
            require(self.path.startswith("/"), "path", "must start with '/'")
            require(8000 <= self.sample_rate_hz <= 96000, "sample_rate_hz", "must be 8000..96000")
            require(self.speed is None or 0.25 <= self.speed <= 4.0, "speed", "must be 0.25..4.0")

    def __init__(self, options: OpenAiTts.Options) -> None:
        super().__init__(
            options, path=options.path, media=options.response_format, sample_rate_hz=options.sample_rate_hz
        )
        self.options = options

    def request_body(self, text: str, ctx: StageContext) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.options.model,
            "input": text,
            "voice": ctx.voice or self.options.voice,
            "response_format": self.options.response_format,
        }
        if self.options.speed is not None:
            body["speed"] = self.options.speed
        if self.options.instructions:
            body["instructions"] = self.options.instructions
        return body

"""OpenAI-compatible transcription as an ASR backend: ``POST /v1/audio/transcriptions``, a multipart
upload of the utterance as a WAV file, answered with ``{"text": ...}``.

Final transcripts only by default: every partial would upload the whole utterance again
(``partials: true`` turns them on, at the stage's ``partial_interval_ms``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

import httpx

from stages.base import StageContext
from stages.engines.http_common import HttpBackend, bad, body_bytes, parse_json, wav_bytes
from stages.upstream import HttpCall, HttpOptions
from vocab.options import require


async def transcription_text(response: httpx.Response) -> AsyncIterator[str]:
    body = (await body_bytes(response)).decode("utf-8", "replace")
    obj = parse_json(body, "transcription response")
    text = obj.get("text") if isinstance(obj, dict) else None
    if not isinstance(text, str):
        raise bad(f"transcription response has no text: {body[:120]!r}")
    yield text


class OpenAiAsr(HttpBackend):
    kind: ClassVar[str] = "asr"
    backend_name = "openai_asr"
    rate_hz: int | None = None  # the WAV carries the client's rate; the service resamples

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Options(HttpOptions):
        model: str = "whisper-1"
        path: str = "/v1/audio/transcriptions"
        language: str | None = None  # default: the session's language
        prompt: str | None = None  # vocabulary hints
        temperature: float | None = None
        partials: bool = False

        def validate(self) -> None:
            HttpOptions.validate(self)
            require(bool(self.model), "model", "must not be empty")
            require(self.path.startswith("/"), "path", "must start with '/'")

    def __init__(self, options: OpenAiAsr.Options) -> None:
        super().__init__(options)
        self.options = options

    def form_fields(self, ctx: StageContext) -> dict[str, str]:
        fields = {"model": self.options.model, "response_format": "json"}
        language = self.options.language or ctx.language
        if language:
            fields["language"] = language
        if self.options.prompt:
            fields["prompt"] = self.options.prompt
        if self.options.temperature is not None:
            fields["temperature"] = str(self.options.temperature)
        return fields

    async def transcribe(self, pcm: bytes, *, rate_hz: int, final: bool, ctx: StageContext) -> str:
        if not final and not self.options.partials:
            return ""
        call = HttpCall(
            "POST",
            self.options.path,
            data=self.form_fields(ctx),
            files={"file": ("speech.wav", wav_bytes(pcm, rate_hz), "audio/wav")},
            idempotent=True,
        )
        texts = self.upstream.stream(call, transcription_text)
        async with contextlib.aclosing(texts):
            return "".join([text async for text in texts])

"""GPT-SoVITS' HTTP API (``api_v2.py``) as a TTS backend: ``POST /tts`` with a JSON body.

With ``streaming_mode`` the body streams: for ``media_type: wav`` a header (sizes 0, the model's rate)
then raw PCM16 pieces; ``raw`` is PCM16 at the model's rate (``sample_rate_hz``: 32 kHz for v1/v2
models, 24 kHz for v3, 48 kHz for v4). A failure is HTTP 400 with ``{"message", "Exception"}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from stages.base import StageContext
from stages.engines.http_common import HttpTtsBackend
from stages.upstream import HttpOptions
from vocab.options import require


class GptSovitsTts(HttpTtsBackend):
    kind: ClassVar[str] = "tts"
    backend_name = "gpt_sovits"

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Options(HttpOptions):
        ref_audio_path: str  # reference voice, a path on the GPT-SoVITS server
        prompt_text: str = ""  # what the reference audio says
        prompt_lang: str = "en"
        text_lang: str | None = None  # default: the session's language, else "auto"
        path: str = "/tts"
        media_type: Literal["wav", "raw"] = "wav"
        streaming_mode: bool | int = True  # api_v2: true/false, or 0..3 (3: fastest, lower quality)
        sample_rate_hz: int = 32000  # rate of ``raw`` output (the model's)
        text_split_method: str = "cut5"
        speed_factor: float = 1.0
        top_k: int | None = None  # unset: the server's defaults
        top_p: float | None = None
        temperature: float | None = None
        seed: int | None = None
        extra: dict[str, Any] = field(default_factory=dict)  # any other api_v2 parameter

        def validate(self) -> None:
            HttpOptions.validate(self)
            require(bool(self.ref_audio_path), "ref_audio_path", "must not be empty")
            require(self.path.startswith("/"), "path", "must start with '/'")
            require(
                isinstance(self.streaming_mode, bool) or 0 <= self.streaming_mode <= 3,
                "streaming_mode",
                "must be true/false or 0..3",
            )
            require(8000 <= self.sample_rate_hz <= 96000, "sample_rate_hz", "must be 8000..96000")
            require(self.speed_factor > 0, "speed_factor", "must be > 0")

    def __init__(self, options: GptSovitsTts.Options) -> None:
        super().__init__(options, path=options.path, media=options.media_type, sample_rate_hz=options.sample_rate_hz)
        self.options = options

    def request_body(self, text: str, ctx: StageContext) -> dict[str, Any]:
        o = self.options
        body: dict[str, Any] = {
            "text": text,
            "text_lang": o.text_lang or ctx.language or "auto",
            "ref_audio_path": o.ref_audio_path,
            "prompt_text": o.prompt_text,
            "prompt_lang": o.prompt_lang,
            "text_split_method": o.text_split_method,
            "speed_factor": o.speed_factor,
            "media_type": o.media_type,
            "streaming_mode": o.streaming_mode,
        }
        for key in ("top_k", "top_p", "temperature", "seed"):
            value = getattr(o, key)
            if value is not None:
                body[key] = value
        return {**body, **o.extra}

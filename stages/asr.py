"""ASR stage: collects one utterance's audio, sends partial transcripts while it grows, the final at its end.

Partials re-decode the growing buffer at most every ``partial_interval_ms`` and never more than one
at a time, in the background, so audio keeps flowing while a partial decodes; a slow backend simply
yields fewer partials (it never falls behind real time). Backends implement ``AsrBackend``.

Speculative final: when the user pauses (``pause_decode_ms`` of trailing silence, as reported by the
VAD), the utterance so far is decoded as a final right away. If the VAD then ends the utterance with
no voice heard since, that decode *is* the final transcript, so the endpoint silence and the final
decode overlap instead of adding up; if the user speaks again, it is dropped. Its text also tells the
VAD whether the words sound finished (``stages/endpointing.py``; ``StageContext.turn_hints``), so the VAD
waits after "a flight to" and not after "What time is it?". With ``turn_model`` set, an audio turn model
(``stages/turn_model.py``) scores the same audio beside that decode, and the words count as finished only
when the voice sounds finished too (a misheard "lights in there." after "the lights in the").

Urgent turns (``StageContext.urgent_turns``: voice over the agent, whose words decide a barge-in) get
partials early and often (``urgent_min_audio_ms``, ``urgent_interval_ms``).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from stages import turn_model
from stages.base import Backend, BaseStage, Emitter, StageContext, StageKind
from stages.endpointing import sounds_complete
from stages.items import Item, SpeechAudio, Transcription
from vocab.errors import StageError
from vocab.options import require


@dataclass(frozen=True, slots=True)
class Heard:
    """A decode's words and how sure the backend was of them (mean log-probability per token)."""

    text: str
    logprob: float | None = None


_SAYS_SOMETHING = re.compile(r"\w")


def heard(result: str | Heard) -> Heard:
    """A backend's answer as ``Heard``, stripped; punctuation alone (Whisper's ". . . ." for a noise) is no words."""
    words = result if isinstance(result, Heard) else Heard(result)
    text = words.text.strip()
    if not _SAYS_SOMETHING.search(text):
        text = ""
    return words if text == words.text else Heard(text, words.logprob)


class AsrBackend(Backend, Protocol):
    kind: ClassVar[str]  # "asr"
    rate_hz: int | None  # rate it needs, or None for any

    async def transcribe(self, pcm: bytes, *, rate_hz: int, final: bool, ctx: StageContext) -> str | Heard:
        """Text of the whole utterance so far (with its confidence, if the backend knows it). Runs heavy
        work off the event loop; cancellable."""
        ...


@dataclass(frozen=True, slots=True)
class Options:
    partial_interval_ms: float = 700.0  # 0 turns partial transcripts off
    min_partial_audio_ms: float = 300.0
    max_utterance_ms: float = 30000.0  # older audio of a longer utterance is dropped
    pause_decode_ms: float = 120.0  # trailing silence that starts a speculative final decode; 0 turns it off
    urgent_min_audio_ms: float = 240.0  # an urgent turn's first partial, after this much audio
    urgent_interval_ms: float = 160.0  # and its next ones this often
    turn_model: str = "none"  # smart-turn: the voice must sound finished too (stages/turn_model.py)
    turn_finished_prob: float = 0.3  # below this turn-model score the voice overrules finished words

    def validate(self) -> None:
        require(self.partial_interval_ms >= 0, "partial_interval_ms", "must be >= 0")
        require(self.turn_model in turn_model.MODELS, "turn_model", f"must be one of {', '.join(turn_model.MODELS)}")
        require(0 <= self.turn_finished_prob <= 1, "turn_finished_prob", "must be in 0..1")
        require(self.pause_decode_ms >= 0, "pause_decode_ms", "must be >= 0")
        require(self.max_utterance_ms >= 1000, "max_utterance_ms", "must be >= 1000")


class AsrStage(BaseStage):
    interruptible: ClassVar[bool] = True

    def __init__(self, options: Options, backend: AsrBackend, ctx: StageContext) -> None:
        self.options = options
        self.backend = backend
        self.ctx = ctx
        self.turn_model = turn_model.load(options.turn_model, lambda _line: None)  # loaded at start-up
        self.turn: int | None = None
        self.buffer = bytearray()
        self.received_bytes = 0  # of this utterance, at the backend's rate (the buffer may be trimmed)
        self.rate_hz = 16000
        self.resampler: Any = None
        self.partial_task: asyncio.Task[None] | None = None
        self.decoded_bytes = 0  # buffer length at the last partial
        self.last_partial: str | None = None
        self.partials_sent = 0
        # speculative final: its task, and received_bytes / trailing silence when it started
        self.pause_task: asyncio.Task[Heard | None] | None = None
        self.pause_at_bytes = 0
        self.pause_silence_ms = 0.0

    def _reset(self, turn: int, rate_hz: int) -> None:
        self._cancel_partial()
        self._drop_pause_decode()
        self.turn = turn
        self.buffer.clear()
        self.received_bytes = 0
        self.decoded_bytes = 0
        self.last_partial = None
        self.partials_sent = 0
        self.resampler = None
        target = self.backend.rate_hz
        self.rate_hz = target or rate_hz
        if target and target != rate_hz:
            from stages.resample import Resampler

            self.resampler = Resampler(rate_hz, target)

    def _cancel_partial(self) -> None:
        if self.partial_task is not None and not self.partial_task.done():
            self.partial_task.cancel()
        self.partial_task = None

    def _drop_pause_decode(self) -> None:
        if self.pause_task is not None and not self.pause_task.done():
            self.pause_task.cancel()
        self.pause_task = None

    async def process(self, item: Item, out: Emitter) -> None:
        if not isinstance(item, SpeechAudio):
            return
        if item.turn != self.turn:
            self._reset(item.turn, item.rate_hz)
        pcm = item.pcm if self.resampler is None else self.resampler.process(item.pcm)
        self.buffer += pcm
        self.received_bytes += len(pcm)
        max_bytes = int(self.options.max_utterance_ms * self.rate_hz / 1000) * 2
        if len(self.buffer) > max_bytes:
            del self.buffer[: len(self.buffer) - max_bytes]
        self._track_pause(item.trailing_silence_ms)
        if self.pause_task is None:
            self._maybe_partial(out)

    def _track_pause(self, trailing_silence_ms: float) -> None:
        """Start a speculative final at a pause; drop it when voice came back since."""
        bytes_per_ms = self.rate_hz * 2 / 1000
        if self.pause_task is not None:
            # while nobody speaks, the silence run grows as fast as the audio does
            expected_ms = self.pause_silence_ms + (self.received_bytes - self.pause_at_bytes) / bytes_per_ms
            if trailing_silence_ms < expected_ms - 40.0:
                self._drop_pause_decode()
            return
        pause_ms = self.options.pause_decode_ms
        if pause_ms > 0 and trailing_silence_ms >= pause_ms and len(self.buffer) >= 100 * bytes_per_ms:
            self._cancel_partial()  # the speculative final supersedes it
            self.pause_at_bytes = self.received_bytes
            self.pause_silence_ms = trailing_silence_ms
            covers_ms = self.received_bytes / bytes_per_ms
            self.pause_task = self.ctx.spawn(self._speculate(self.turn or 0, bytes(self.buffer), covers_ms))

    async def _speculate(self, turn: int, pcm: bytes, covers_ms: float) -> Heard | None:
        voice = None if self.turn_model is None else self.ctx.spawn(self.turn_model.finished_prob(pcm, self.rate_hz))
        try:
            words = heard(await self.backend.transcribe(pcm, rate_hz=self.rate_hz, final=True, ctx=self.ctx))
            finished_prob = None if voice is None else await voice
        except StageError:
            return None  # the real final decode will run (and report a persistent failure)
        finally:
            if voice is not None:
                voice.cancel()
        if self.turn == turn:  # still this utterance: tell the VAD whether its words (and voice) sound finished
            finished = sounds_complete(words.text)
            if finished_prob is not None:
                finished = finished and finished_prob >= self.options.turn_finished_prob
            self.ctx.turn_hints[turn] = (covers_ms, finished)
        return words

    def _maybe_partial(self, out: Emitter) -> None:
        urgent = self.turn in self.ctx.urgent_turns
        interval = self.options.urgent_interval_ms if urgent else self.options.partial_interval_ms
        if interval <= 0 or (self.partial_task is not None and not self.partial_task.done()):
            return
        bytes_per_ms = self.rate_hz * 2 / 1000
        min_audio_ms = self.options.urgent_min_audio_ms if urgent else self.options.min_partial_audio_ms
        if len(self.buffer) < min_audio_ms * bytes_per_ms:
            return
        if len(self.buffer) - self.decoded_bytes < interval * bytes_per_ms:
            return
        self.decoded_bytes = len(self.buffer)
        self.partial_task = self.ctx.spawn(self._partial(self.turn or 0, bytes(self.buffer), out))

    async def _partial(self, turn: int, pcm: bytes, out: Emitter) -> None:
        try:
            words = heard(await self.backend.transcribe(pcm, rate_hz=self.rate_hz, final=False, ctx=self.ctx))
        except StageError as exc:
            if exc.code == "busy":
                return  # shed under load (finals go first): a partial less, not an error for the user
            raise
        text = words.text
        # An urgent turn's first partial goes out even with no words ("nothing said" decides too), and its
        # repeats go out too: words heard again a decode later confirm an interruption ("Wait." twice
        # decides at the second partial instead of waiting ~400 ms for the words to change).
        urgent = turn in self.ctx.urgent_turns
        first_urgent = not self.partials_sent and urgent
        news = text != self.last_partial or (urgent and bool(text))
        if (text or first_urgent) and news and self.turn == turn and self.ctx.is_live(turn):
            self.last_partial = text
            self.partials_sent += 1
            await out.emit(Transcription(turn, text, final=False, logprob=words.logprob))

    async def finish(self, turn: int, out: Emitter) -> None:
        if turn != self.turn:
            await out.emit(Transcription(turn, "", final=True))
            return
        self._cancel_partial()
        pause_task, self.pause_task = self.pause_task, None
        if self.resampler is not None:
            self.buffer += self.resampler.flush()
        pcm = bytes(self.buffer)
        self.buffer.clear()
        self.turn = None
        words: Heard | None = None
        if pause_task is not None and not pause_task.cancelled():
            words = await pause_task  # decoded at the pause, with no voice since: the final transcript
        if words is None and pcm:
            words = heard(await self.backend.transcribe(pcm, rate_hz=self.rate_hz, final=True, ctx=self.ctx))
        words = words or Heard("")
        await out.emit(Transcription(turn, words.text, final=True, logprob=words.logprob))

    async def close(self) -> None:
        self._cancel_partial()
        self._drop_pause_decode()


def _load(options: Options, log: Callable[[str], None]) -> None:
    turn_model.load(options.turn_model, log)


KIND: StageKind[AsrBackend] = StageKind("asr", "speech", "text", Options, AsrStage, load=_load)

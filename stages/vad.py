"""VAD stage: frames raw client audio, decides speech per frame with a backend, and cuts utterances.

Smoothing: speech starts after ``start_ms`` of consecutive voiced frames (the pre-roll before it is
kept), and ends after a run of silence, or at ``commit``, or at ``max_utterance_ms``. How long a silence:
``end_complete_ms`` when the words so far sound finished, ``end_incomplete_ms`` when they do not (the
ASR's hint, ``StageContext.turn_hints``, from its decode at the pause), ``end_ms`` while no hint covers
the last voiced frame. Each utterance opens a new turn. Backends only answer "is this frame speech?"
(``VadBackend``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from stages.base import Backend, BaseStage, Emitter, StageContext, StageKind
from stages.items import AudioIn, Item, SpeechAudio, TurnDone, UserCommit, VadEvent
from vocab.options import require

Detector = Callable[[bytes], bool]


class VadBackend(Backend, Protocol):
    kind: ClassVar[str]  # "vad"
    frame_ms: int  # frame duration the detector takes
    rate_hz: int | None  # rate it needs, or None for any rate

    def supports_rate(self, rate_hz: int) -> bool: ...

    def new_detector(self, rate_hz: int) -> Detector:
        """Per-session detector state; called on every new connection, must be cheap."""
        ...


@dataclass(frozen=True, slots=True)
class Options:
    start_ms: float = 60.0  # consecutive voiced time before speech_start
    end_ms: float = 400.0  # silence that ends the utterance when no end-of-turn hint covers it
    end_complete_ms: float = 200.0  # ... when the words before the pause sound finished
    end_incomplete_ms: float = 1200.0  # ... when they do not ("a flight to"): the longest wait
    pre_roll_ms: float = 200.0  # audio kept from before speech_start
    max_utterance_ms: float = 30000.0  # an utterance is cut here
    sustain_gap_ms: float = 100.0  # unvoiced gaps up to this long do not break a sustained run (barge-in)

    def validate(self) -> None:
        require(self.start_ms >= 0, "start_ms", "must be >= 0")
        require(self.end_ms > 0, "end_ms", "must be > 0")
        require(self.end_complete_ms > 0, "end_complete_ms", "must be > 0")
        require(self.end_incomplete_ms >= self.end_complete_ms, "end_incomplete_ms", "must be >= end_complete_ms")
        require(self.pre_roll_ms >= 0, "pre_roll_ms", "must be >= 0")
        require(self.max_utterance_ms >= 500, "max_utterance_ms", "must be >= 500")


class VadStage(BaseStage):
    interruptible: ClassVar[bool] = False
    inline: ClassVar[bool] = True  # a few microseconds per frame: runs in the reader's task when idle

    def __init__(self, options: Options, backend: VadBackend, ctx: StageContext) -> None:
        self.options = options
        self.ctx = ctx
        rate = ctx.in_rate_hz
        self.resampler: Any = None
        if not backend.supports_rate(rate):
            from stages.resample import Resampler

            target = backend.rate_hz or 16000
            self.resampler = Resampler(rate, target)
            rate = target
        self.rate_hz = rate
        self.detect = backend.new_detector(rate)
        self.frame_bytes = int(rate * backend.frame_ms / 1000) * 2
        self.frame_ms = float(backend.frame_ms)
        self.pending = b""
        self.pre_roll: deque[bytes] = deque(maxlen=max(1, int(options.pre_roll_ms / self.frame_ms)))
        self.turn: int | None = None
        self.voiced_run_ms = 0.0
        self.silence_run_ms = 0.0
        self.voiced_ms = 0.0  # voiced time of the current sustained run (gaps < sustain_gap_ms bridged)
        self.gap_ms = 0.0
        self.utterance_ms = 0.0
        self.last_voiced_audio_ms = 0.0  # position of the last voiced frame in the utterance's audio
        self.last_voiced_at = 0.0

    async def process(self, item: Item, out: Emitter) -> None:
        if isinstance(item, UserCommit):
            await self._commit(item.at, out)
            return
        if not isinstance(item, AudioIn):
            return
        pcm = item.pcm if self.resampler is None else self.resampler.process(item.pcm)
        data = self.pending + pcm
        n_frames = len(data) // self.frame_bytes
        self.pending = data[n_frames * self.frame_bytes :]
        speech = bytearray()
        for i in range(n_frames):
            frame = data[i * self.frame_bytes : (i + 1) * self.frame_bytes]
            voiced = self.detect(frame)
            if self.turn is None:
                self.pre_roll.append(frame)
                self.voiced_run_ms = self.voiced_run_ms + self.frame_ms if voiced else 0.0
                if voiced:
                    self.last_voiced_at = item.received_at
                if self.voiced_run_ms >= max(self.options.start_ms, self.frame_ms):
                    await self._start(out)
                    speech += b"".join(self.pre_roll)
                    self.pre_roll.clear()
                continue
            speech += frame
            self.utterance_ms += self.frame_ms
            if voiced:
                self.voiced_ms += self.frame_ms
                self.silence_run_ms = self.gap_ms = 0.0
                self.last_voiced_at = item.received_at
                self.last_voiced_audio_ms = self.utterance_ms
            else:
                self.silence_run_ms += self.frame_ms
                self.gap_ms += self.frame_ms
                if self.gap_ms > self.options.sustain_gap_ms:
                    self.voiced_ms = 0.0
            if self.silence_run_ms >= self._end_silence_ms() or self.utterance_ms >= self.options.max_utterance_ms:
                await self._flush(speech, out)
                speech = bytearray()
                await self._end(out)
        await self._flush(speech, out)

    def _end_silence_ms(self) -> float:
        """The silence that ends this utterance now: from the words' hint when it covers the last voice."""
        hint = self.ctx.turn_hints.get(self.turn) if self.turn is not None else None
        if hint is None or hint[0] < self.last_voiced_audio_ms:
            return self.options.end_ms
        return self.options.end_complete_ms if hint[1] else self.options.end_incomplete_ms

    async def _flush(self, speech: bytearray, out: Emitter) -> None:
        if speech and self.turn is not None:
            await out.emit(
                SpeechAudio(
                    turn=self.turn,
                    pcm=bytes(speech),
                    rate_hz=self.rate_hz,
                    voiced_ms=self.voiced_ms,
                    trailing_silence_ms=self.silence_run_ms,
                )
            )

    async def _start(self, out: Emitter) -> None:
        self.turn = self.ctx.new_turn()
        self.voiced_ms = self.voiced_run_ms
        self.gap_ms = 0.0
        self.utterance_ms = self.frame_ms * len(self.pre_roll)
        self.last_voiced_audio_ms = self.utterance_ms
        self.silence_run_ms = 0.0
        await out.emit(VadEvent(self.turn, "speech_start"))

    async def _end(self, out: Emitter) -> None:
        turn, self.turn = self.turn, None
        self.voiced_run_ms = 0.0
        if turn is not None:
            self.ctx.turn_hints.pop(turn, None)
            await out.emit(VadEvent(turn, "speech_end", voiced_until=self.last_voiced_at))
            await out.emit(TurnDone(turn))

    async def _commit(self, at: float, out: Emitter) -> None:
        """Push-to-talk: end the utterance now. Voice too short to have started one still counts."""
        self.pending = b""
        if self.turn is None:
            if self.voiced_run_ms <= 0:
                return  # nothing voiced since the last utterance: nothing to commit
            await self._start(out)
            await self._flush(bytearray(b"".join(self.pre_roll)), out)
            self.pre_roll.clear()
        await self._end(out)


KIND: StageKind[VadBackend] = StageKind("vad", "audio", "speech", Options, VadStage)

"""VAD stage: frames raw client audio, decides speech per frame with a backend, and cuts utterances.

Smoothing: speech starts after ``start_ms`` of consecutive voiced frames (the pre-roll before it is
kept), and ends after a run of silence, or at ``commit``, or at ``max_utterance_ms``. How long a silence:
``end_complete_ms`` when the words so far sound finished, ``end_incomplete_ms`` when they do not (the
ASR's hint, ``StageContext.turn_hints``, from its decode at the pause), ``end_ms`` while no hint covers
the last voiced frame or when those two are not set (endpointing from the words is off). Each
utterance opens a new turn. Backends only answer "is this frame speech?" (``VadBackend``). A session
may override the silence (a fixed one, hints aside), ``pre_roll_ms`` and the sensitivity, or turn
endpointing off (``manual``: the client commits), through ``StageContext.vad``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from stages.base import Backend, BaseStage, Emitter, StageContext, StageKind, VadOverrides
from stages.items import AudioIn, InputCleared, Item, SpeechAudio, TurnDone, UserClear, UserCommit, VadEvent
from vocab.options import require

Detector = Callable[[bytes], bool]


class VadBackend(Backend, Protocol):
    kind: ClassVar[str]  # "vad"
    frame_ms: int  # frame duration the detector takes
    rate_hz: int | None  # rate it needs, or None for any rate

    def supports_rate(self, rate_hz: int) -> bool: ...

    def new_detector(self, rate_hz: int, threshold: float | None = None) -> Detector:
        """Per-session detector state; called on every new connection, must be cheap. ``threshold``
        (0..1, higher needs louder speech; None: the configured sensitivity) comes from a client's
        turn detection settings and is mapped to the backend's own scale."""
        ...


@dataclass(frozen=True, slots=True)
class Options:
    start_ms: float = 60.0  # consecutive voiced time before speech_start
    end_ms: float = 400.0  # silence that ends the utterance when no end-of-turn hint covers it
    # endpointing from the words (both set, or neither: end_ms alone then): the silence that ends the
    # utterance when the words before the pause sound finished, and when they do not ("a flight to")
    end_complete_ms: float | None = None
    end_incomplete_ms: float | None = None
    pre_roll_ms: float = 200.0  # audio kept from before speech_start
    max_utterance_ms: float = 30000.0  # an utterance is cut here
    sustain_gap_ms: float = 100.0  # unvoiced gaps up to this long do not break a sustained run (barge-in)

    def validate(self) -> None:
        require(self.start_ms >= 0, "start_ms", "must be >= 0")
        require(self.end_ms > 0, "end_ms", "must be > 0")
        require(
            (self.end_complete_ms is None) == (self.end_incomplete_ms is None),
            "end_complete_ms" if self.end_complete_ms is None else "end_incomplete_ms",
            "set end_complete_ms and end_incomplete_ms together (or neither: end_ms alone)",
        )
        if self.end_complete_ms is not None and self.end_incomplete_ms is not None:
            require(self.end_complete_ms > 0, "end_complete_ms", "must be > 0")
            require(self.end_incomplete_ms >= self.end_complete_ms, "end_incomplete_ms", "must be >= end_complete_ms")
        require(self.pre_roll_ms >= 0, "pre_roll_ms", "must be >= 0")
        require(self.max_utterance_ms >= 500, "max_utterance_ms", "must be >= 500")


class VadStage(BaseStage):
    interruptible: ClassVar[bool] = False
    inline: ClassVar[bool] = True  # a few microseconds per frame: runs in the reader's task when idle

    def __init__(self, options: Options, backend: VadBackend, ctx: StageContext) -> None:
        self.options = options
        self.backend = backend
        self.ctx = ctx
        rate = ctx.in_rate_hz
        self.resampler: Any = None
        if not backend.supports_rate(rate):
            from stages.resample import Resampler

            target = backend.rate_hz or 16000
            self.resampler = Resampler(rate, target)
            rate = target
        self.rate_hz = rate
        self.frame_bytes = int(rate * backend.frame_ms / 1000) * 2
        self.frame_ms = float(backend.frame_ms)
        self.pending = b""
        self.turn: int | None = None
        self.voiced_run_ms = 0.0
        self.silence_run_ms = 0.0
        self.voiced_ms = 0.0  # voiced time of the current sustained run (gaps < sustain_gap_ms bridged)
        self.gap_ms = 0.0
        self.utterance_ms = 0.0
        self.last_voiced_audio_ms = 0.0  # position of the last voiced frame in the utterance's audio
        self.last_voiced_at = 0.0
        self.frames = 0  # frames seen in the session: the input clock of ``VadEvent.audio_ms``
        self.pre_roll: deque[bytes] = deque(maxlen=1)
        self.detect: Detector = backend.new_detector(rate)
        self._applied: VadOverrides | None = None
        self._apply(ctx.vad)

    def _apply(self, overrides: VadOverrides) -> None:
        """The session's turn detection settings over the configured options (checked per item: cheap)."""
        previous, self._applied = self._applied, overrides
        self.manual = overrides.manual
        self.end_override_ms = overrides.end_ms
        pre_roll_ms = self.options.pre_roll_ms if overrides.pre_roll_ms is None else overrides.pre_roll_ms
        frames = max(1, int(pre_roll_ms / self.frame_ms))
        if self.pre_roll.maxlen != frames:
            self.pre_roll = deque(self.pre_roll, maxlen=frames)
        if overrides.threshold != (None if previous is None else previous.threshold):
            self.detect = self.backend.new_detector(self.rate_hz, overrides.threshold)

    async def process(self, item: Item, out: Emitter) -> None:
        if self.ctx.vad is not self._applied:
            self._apply(self.ctx.vad)
        if isinstance(item, UserCommit):
            await self._commit(item.at, out)
            return
        if isinstance(item, UserClear):
            await self._clear(out)
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
            self.frames += 1
            voiced = self.detect(frame)
            if self.turn is None:
                self.pre_roll.append(frame)
                self.voiced_run_ms = self.voiced_run_ms + self.frame_ms if voiced else 0.0
                if voiced:
                    self.last_voiced_at = item.received_at
                if self.manual or self.voiced_run_ms >= max(self.options.start_ms, self.frame_ms):
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
            ended = not self.manual and self.silence_run_ms >= self._end_silence_ms()
            if ended or self.utterance_ms >= self.options.max_utterance_ms:
                await self._flush(speech, out)
                speech = bytearray()
                await self._end(out)
        await self._flush(speech, out)

    def _end_silence_ms(self) -> float:
        """The silence that ends this utterance now: the session's own when it set one, else from the words'
        hint when it covers the last voice."""
        if self.end_override_ms is not None:
            return self.end_override_ms
        complete_ms, incomplete_ms = self.options.end_complete_ms, self.options.end_incomplete_ms
        hint = self.ctx.turn_hints.get(self.turn) if self.turn is not None else None
        if complete_ms is None or incomplete_ms is None or hint is None or hint[0] < self.last_voiced_audio_ms:
            return self.options.end_ms
        return complete_ms if hint[1] else incomplete_ms

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
        start_ms = (self.frames - len(self.pre_roll)) * self.frame_ms
        await out.emit(VadEvent(self.turn, "speech_start", audio_ms=start_ms))

    async def _end(self, out: Emitter) -> None:
        turn, self.turn = self.turn, None
        self.voiced_run_ms = 0.0
        if turn is not None:
            self.ctx.turn_hints.pop(turn, None)
            end_ms = self.frames * self.frame_ms
            await out.emit(VadEvent(turn, "speech_end", voiced_until=self.last_voiced_at, audio_ms=end_ms))
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

    async def _clear(self, out: Emitter) -> None:
        """Drop everything not committed: the pending frame, the pre-roll, and the open utterance if any."""
        self.pending = b""
        self.pre_roll.clear()
        self.voiced_run_ms = 0.0
        turn, self.turn = self.turn, None
        if turn is not None:
            await out.emit(InputCleared(turn))


KIND: StageKind[VadBackend] = StageKind("vad", "audio", "speech", Options, VadStage)

"""Items that flow between stages of a session graph; every item but raw input audio carries its turn.

Graph edge types: ``audio`` (raw client PCM), ``speech`` (VAD-gated utterance audio), ``text``
(transcriptions, replies), ``audio`` again out of TTS. ``downstream`` says whether the next stage
gets an item. Which items reach the client, and as what, is the server's business
(``server/outbound.py``); stages know nothing about the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal


@dataclass(frozen=True, slots=True)
class AudioIn:
    """Raw client audio, PCM16 LE mono; ``received_at`` is ``time.monotonic()`` on arrival."""

    pcm: bytes
    rate_hz: int
    received_at: float
    turn: ClassVar[int | None] = None
    downstream: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class UserCommit:
    """The user's utterance ends now (push-to-talk ``commit``), at monotonic time ``at``."""

    at: float
    turn: ClassVar[int | None] = None
    downstream: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class UserClear:
    """Forget the input audio not yet committed (the client cleared its input buffer)."""

    at: float
    turn: ClassVar[int | None] = None
    downstream: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class VadEvent:
    """Voice activity edge. ``voiced_until`` (speech_end) is when the last voiced frame arrived.

    ``audio_ms`` places the edge on the input clock (ms of audio the VAD received in the session): the
    start of the utterance's audio, pre-roll included, or its end.
    """

    turn: int
    event: Literal["speech_start", "speech_end"]
    voiced_until: float = 0.0
    audio_ms: float = 0.0
    downstream: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class InputCleared:
    """The VAD dropped the open utterance of ``turn`` (``UserClear``): the turn ends with nothing to answer."""

    turn: int
    downstream: ClassVar[bool] = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechAudio:
    """Audio of one utterance (turn), PCM16 LE mono at ``rate_hz``.

    ``voiced_ms`` is the voiced time of the current sustained run of speech (short gaps bridged):
    the session compares it with ``barge_in_min_ms`` for barge-in. ``trailing_silence_ms`` is the
    unvoiced time at the end of this piece (0 when its last frame is voiced): the ASR stage starts
    a speculative final decode when the user pauses.
    """

    turn: int
    pcm: bytes
    rate_hz: int
    voiced_ms: float = 0.0
    trailing_silence_ms: float = 0.0
    downstream: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Transcription:
    """ASR output. Partials go to the client only; the final one also goes downstream."""

    turn: int
    text: str
    final: bool
    # mean log-probability per token of the words (Whisper's avg_logprob): how sure the ASR was, for the
    # barge-in decision; None when the backend does not say. Not sent to the client.
    logprob: float | None = None

    @property
    def downstream(self) -> bool:
        return self.final


@dataclass(frozen=True, slots=True)
class ReplyDelta:
    """A piece of the agent's reply text (LLM output, or the whole text of a ``say``)."""

    turn: int
    text: str
    final: bool = False
    downstream: ClassVar[bool] = True


@dataclass(frozen=True, slots=True, kw_only=True)
class AudioChunk:
    """Agent audio, PCM16 LE mono at the session's output rate.

    ``text`` is set on the first chunk of each spoken clause, with the clause's whole duration in
    ``text_ms`` when known (0 when still streaming), so the session can tell what was actually
    spoken when a turn is cut off.
    """

    turn: int
    pcm: bytes
    rate_hz: int
    text: str | None = None
    text_ms: float = 0.0
    downstream: ClassVar[bool] = True

    @property
    def duration_ms(self) -> float:
        return len(self.pcm) * 500.0 / self.rate_hz


@dataclass(frozen=True, slots=True)
class TurnDone:
    """End of a turn's input to a stage. The runner forwards it after ``Stage.finish``."""

    turn: int
    downstream: ClassVar[bool] = True


Item = (
    AudioIn
    | UserCommit
    | UserClear
    | VadEvent
    | InputCleared
    | SpeechAudio
    | Transcription
    | ReplyDelta
    | AudioChunk
    | TurnDone
)


def committed_text(item: Any) -> str | None:
    """Text a consumer should append for a turn: final transcriptions and reply deltas; else None."""
    if isinstance(item, ReplyDelta):
        return item.text
    if isinstance(item, Transcription) and item.final:
        return item.text
    return None

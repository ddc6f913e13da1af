"""Stage items -> wire messages: the one place that decides what of a stage's output the client sees, and as what."""

from __future__ import annotations

from typing import Any

from server.playhead import Released
from stages.items import ReplyDelta, Transcription, VadEvent
from transports import messages as m


def to_message(stage: str, item: Any) -> Any | None:
    """The client message for a stage output, tagged with the stage's name; None for internal items."""
    kind = type(item)
    if kind is ReplyDelta:
        return m.Reply(stage=stage, turn=item.turn, text=item.text, final=item.final)
    if kind is Transcription:
        return m.Transcript(stage=stage, turn=item.turn, text=item.text, final=item.final)
    if kind is VadEvent:
        return m.Vad(stage=stage, turn=item.turn, event=item.event, audio_ms=item.audio_ms)
    return None


def audio_message(released: Released) -> m.AudioOut:
    """Agent audio that left the playhead, as an ``audio`` message (``seq`` counts within its turn)."""
    return m.AudioOut(stage=released.stage, turn=released.turn, seq=released.seq, data=released.pcm)

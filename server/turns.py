"""Per-turn bookkeeping (latency marks, the reply text) and the session's turn counter.

A turn is live from its creation until its ``turn_end`` or ``interrupted``; ``Turns.live`` holds only
live turns, so "is this turn over?" is a dict lookup (the graph and the outbox ask it per item).
What a turn's audio did on the playout timeline is the playhead's (``server/playhead.py``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from stages.base import ANSWER, ReplyPlan
from vocab.telemetry import Span


@dataclass(slots=True)
class Turn:
    id: int
    created_at: float = field(default_factory=time.monotonic)
    from_speech: bool = False
    # When the user's input of this turn was complete (last voiced frame, commit, or text arrival).
    input_end_at: float | None = None
    first_output_at: dict[str, float] = field(default_factory=dict)
    reply_parts: list[str] = field(default_factory=list)
    failed: bool = False
    plan: ReplyPlan = ANSWER  # how the agent answers (the LLM and TTS stages read it)
    # what the turn reports (server/session_report.py): its trace's root span once opened, the speech
    # audio the VAD cut for it, the error codes sent for it
    span: Span | None = None
    audio_in_ms: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def responding(self) -> bool:
        """The user's input is complete, so the agent is thinking or speaking for this turn."""
        return self.input_end_at is not None

    @property
    def reply_text(self) -> str:
        return "".join(self.reply_parts).strip()

    def mark_output(self, stage: str, now: float) -> None:
        if self.input_end_at is not None and stage not in self.first_output_at:
            self.first_output_at[stage] = now

    def metrics(self, first_audio_at: float | None) -> tuple[dict[str, float], float | None]:
        """Per-stage time to first output and voice-to-voice, both in ms from the end of input."""
        if self.input_end_at is None:
            return {}, None
        t0 = self.input_end_at
        first = {stage: round((at - t0) * 1000.0, 1) for stage, at in self.first_output_at.items()}
        v2v = None
        if self.from_speech and first_audio_at is not None:
            v2v = round((first_audio_at - t0) * 1000.0, 1)
        return first, v2v


class Turns:
    """The turn counter (ids increase within the session) and the live turns."""

    __slots__ = ("last", "live")

    def __init__(self) -> None:
        self.live: dict[int, Turn] = {}
        self.last = 0

    def new(self, *, from_speech: bool) -> Turn:
        self.last += 1
        turn = self.live[self.last] = Turn(self.last, from_speech=from_speech)
        return turn

    def get(self, turn_id: int) -> Turn | None:
        return self.live.get(turn_id)

    def end(self, turn_id: int) -> Turn | None:
        """The turn is over (ended or cut off): nothing of it leaves from now on."""
        return self.live.pop(turn_id, None)

    def responding(self, *, before: int | None = None) -> list[Turn]:
        """Turns the agent is answering (older than ``before`` when given); not those planned without a reply."""
        return [
            t for t in self.live.values() if t.responding and t.plan.reply and (before is None or t.id < before)
        ]

"""Per-turn bookkeeping: latency marks, the reply text, and the audio timeline that tells what was spoken.

A turn is live from its creation until its ``turn_end`` or ``interrupted``; the session keeps only
live turns, so "is this turn over?" is a dict lookup.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Turn:
    id: int
    created_at: float = field(default_factory=time.monotonic)
    from_speech: bool = False
    # When the user's input of this turn was complete (last voiced frame, commit, or text arrival).
    input_end_at: float | None = None
    first_output_at: dict[str, float] = field(default_factory=dict)
    reply_parts: list[str] = field(default_factory=list)
    history_index: int | None = None  # where the agent's message sits in the history, once added
    # audio timeline
    seq: int = 0
    audio_sent_ms: float = 0.0
    first_audio_sent_at: float | None = None
    # (start_ms, clause text, clause ms or 0 when unknown) per spoken clause
    segments: list[tuple[float, str, float]] = field(default_factory=list)
    played_ack_ms: float | None = None
    failed: bool = False

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

    def audio_sent(self, duration_ms: float, text: str | None, text_ms: float, now: float) -> None:
        if self.first_audio_sent_at is None:
            self.first_audio_sent_at = now
        if text:
            self.segments.append((self.audio_sent_ms, text, text_ms))
        self.audio_sent_ms += duration_ms
        self.seq += 1

    def played_ms(self, now: float) -> float:
        """Client acks when it sent any, else the real time elapsed since the first chunk left."""
        if self.played_ack_ms is not None:
            return min(self.played_ack_ms, self.audio_sent_ms)
        if self.first_audio_sent_at is None:
            return 0.0
        return min(self.audio_sent_ms, (now - self.first_audio_sent_at) * 1000.0)

    def spoken_text(self, played_ms: float, *, has_audio: bool) -> str:
        """What the user actually heard: whole clauses, plus the played share of the current one.

        A clause's length is known once the next one starts or when it arrived whole (``text_ms``);
        otherwise it is estimated from the speaking rate so far (or 65 ms per character).
        """
        if not has_audio:
            return self.reply_text
        words: list[str] = []
        done_ms = done_chars = 0.0
        for i, (start_ms, text, text_ms) in enumerate(self.segments):
            if played_ms <= start_ms:
                break
            if i + 1 < len(self.segments):
                length_ms = self.segments[i + 1][0] - start_ms
            elif text_ms > 0:
                length_ms = text_ms
            else:
                ms_per_char = done_ms / done_chars if done_chars else 65.0
                length_ms = max(self.audio_sent_ms - start_ms, len(text) * ms_per_char)
            clause = text.split()
            if played_ms >= start_ms + length_ms:
                words += clause
                done_ms, done_chars = done_ms + length_ms, done_chars + len(text)
            else:
                share = (played_ms - start_ms) / max(length_ms, 1e-6)
                words += clause[: int(len(clause) * share)]
        return " ".join(words)

    def metrics(self) -> tuple[dict[str, float], float | None]:
        """Per-stage time to first output and voice-to-voice, both in ms from the end of input."""
        if self.input_end_at is None:
            return {}, None
        t0 = self.input_end_at
        first = {stage: round((at - t0) * 1000.0, 1) for stage, at in self.first_output_at.items()}
        v2v = None
        if self.from_speech and self.first_audio_sent_at is not None:
            v2v = round((self.first_audio_sent_at - t0) * 1000.0, 1)
        return first, v2v

"""What one session reports: each turn's trace, the latency histograms, and the structured log lines.

A turn's root span (``turn``) opens the first time anything asks for it (a stage hanging its span under
it, or the turn's end) with the turn's creation time, so nothing is traced for turns nobody works on.
The server's own spans are built when the turn ends, from the marks the session took on the way
(``server/turns.py``: last voiced frame, each stage's first output; the playhead: first audio sent), with
their real times: ``vad.endpoint``, ``asr.final``, ``audio.first_sent``, then ``turn.end`` or
``turn.interrupted``. The stages' spans (``llm.generate``, ``llm.first_token``, ``tts.clause``,
``upstream.request``) are live ones (``stages/``). With telemetry off all of them are the no-op span.

Log lines (``server/logs.py``): ``turn`` per turn, ``session_end`` per connection; ids, times, counts and
error codes. The words said (``transcript``, ``reply``) only with ``telemetry.log_transcripts``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from server.logs import event
from server.turns import Turn
from vocab.metrics import STAGE_FIRST_OUTPUT, VOICE_TO_VOICE
from vocab.telemetry import NOOP_SPAN, Span, Tracer


class SessionReport:
    """Per session; the session calls ``turn_span``, ``error``, ``ended`` and ``session_end``."""

    def __init__(
        self,
        session_id: str,
        user: str | None,
        tracer: Tracer,
        stages: Mapping[str, tuple[str, str]],
        *,
        out_rate_hz: int,
        log_transcripts: bool = False,
        user_text: Callable[[int], str] = lambda _turn: "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.session_id = session_id
        self.user = user
        self.tracer = tracer
        self.stages = dict(stages)  # stage name -> (kind, engine)
        self.out_rate_hz = out_rate_hz
        self.log_transcripts = log_transcripts
        self.user_text = user_text
        self.clock = clock
        self.started_at = clock()
        self.turn_outcomes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.audio_in_bytes = 0  # client audio received (at audio_in.rate), counted by server/dispatch.py
        self.audio_out_bytes = 0  # agent audio sent (at audio_out.rate)

    def _kind(self, stage: str) -> str:
        return self.stages.get(stage, ("custom", ""))[0]

    def _mark(self, turn: Turn, kind: str) -> tuple[str, float] | None:
        """The first stage of ``kind`` that produced output in ``turn``, and when."""
        for stage, at in turn.first_output_at.items():
            if self._kind(stage) == kind:
                return stage, at
        return None

    # ------------------------------------------------------------ spans

    def turn_span(self, turn: Turn) -> Span:
        """The turn's root span, opened at the turn's creation the first time it is asked for."""
        if turn.span is None:
            if not self.tracer.enabled:
                turn.span = NOOP_SPAN
            else:
                turn.span = self.tracer.start(
                    "turn", at=turn.created_at, session=self.session_id, turn=turn.id, from_speech=turn.from_speech
                )
        return turn.span

    def _stage_span(self, root: Span, name: str, stage: str, start: float, end: float, **extra: Any) -> None:
        kind, engine = self.stages.get(stage, ("custom", ""))
        root.child(name, at=start, stage=stage, kind=kind, engine=engine, **extra).end(at=end)

    def _server_spans(self, root: Span, turn: Turn, first_audio_at: float | None) -> None:
        t0 = turn.input_end_at
        if t0 is None:
            return
        vad = self._mark(turn, "vad")
        if turn.from_speech and vad is not None and vad[1] >= t0:
            self._stage_span(root, "vad.endpoint", vad[0], t0, vad[1], audio_in_ms=round(turn.audio_in_ms, 1))
        asr = self._mark(turn, "asr")
        if asr is not None:
            start = vad[1] if vad is not None else t0
            self._stage_span(root, "asr.final", asr[0], min(start, asr[1]), asr[1])
        tts = self._mark(turn, "tts")
        if tts is not None and first_audio_at is not None:
            self._stage_span(root, "audio.first_sent", tts[0], min(tts[1], first_audio_at), first_audio_at)

    # ------------------------------------------------------------ what the session tells

    def error(self, code: str, turn: Turn | None) -> None:
        self.errors[code] += 1
        if turn is not None:
            turn.errors.append(code)

    def ended(
        self,
        turn: Turn,
        outcome: str,
        *,
        at: float,
        first_audio_at: float | None,
        audio_out_ms: float,
        cause: str | None = None,
        played_ms: float | None = None,
        spoken: str | None = None,
    ) -> None:
        """``turn`` is over (``end`` or ``interrupted``) at ``at``: histograms, its trace, its log line."""
        first, v2v = turn.metrics(first_audio_at)
        for stage, ms in first.items():
            STAGE_FIRST_OUTPUT.observe(ms / 1000.0, stage=stage, kind=self._kind(stage))
        if v2v is not None:
            VOICE_TO_VOICE.observe(v2v / 1000.0)
        audio_out_bytes = round(audio_out_ms * self.out_rate_hz / 500.0)
        self.audio_out_bytes += audio_out_bytes
        self.turn_outcomes[outcome] += 1
        trace_id = None
        if turn.span is not None or self.tracer.enabled:
            root = self.turn_span(turn)
            self._server_spans(root, turn, first_audio_at)
            name = "turn.end" if outcome == "end" else "turn.interrupted"
            closing = root.child(name, at=at, **({"cause": cause} if cause else {}))
            if played_ms is not None:
                closing.set(played_ms=round(played_ms, 1))
            closing.end(at=at)
            root.set(turn_outcome=outcome, audio_out_ms=round(audio_out_ms, 1), failed=turn.failed)
            if v2v is not None:
                root.set(voice_to_voice_ms=v2v)
            if turn.errors:
                root.set(errors=",".join(turn.errors))
            root.end("error" if turn.failed else "ok", at=at, error=turn.errors[0] if turn.errors else None)
            trace_id = root.trace_id
        fields: dict[str, Any] = {
            "session": self.session_id,
            "user": self.user,
            "turn": turn.id,
            "outcome": outcome,
            "cause": cause,
            "from_speech": turn.from_speech,
            "first_output_ms": first,
            "voice_to_voice_ms": v2v,
            "duration_ms": round((at - turn.created_at) * 1000.0, 1),
            "audio_in_ms": round(turn.audio_in_ms, 1),
            "audio_out_ms": round(audio_out_ms, 1),
            "audio_out_bytes": audio_out_bytes,
            "played_ms": None if played_ms is None else round(played_ms, 1),
            "failed": turn.failed,
            "errors": list(turn.errors),
            "trace_id": trace_id,
        }
        if self.log_transcripts:
            fields["transcript"] = self.user_text(turn.id)
            fields["reply"] = turn.reply_text if spoken is None else spoken
        event("turn", **{k: v for k, v in fields.items() if v is not None})

    def session_start(self, *, ip: str | None, resumed: bool, audio_in_hz: int, audio_out_hz: int) -> None:
        event(
            "session_start",
            session=self.session_id,
            user=self.user,
            ip=ip,
            resumed=resumed,
            audio_in_hz=audio_in_hz,
            audio_out_hz=audio_out_hz,
        )

    def session_end(self, *, reason: str) -> None:
        """The connection is over: ``bye``/``closed`` (the session ended) or ``held`` (waiting for a resume)."""
        event(
            "session_end",
            session=self.session_id,
            user=self.user,
            reason=reason,
            duration_s=round(self.clock() - self.started_at, 1),
            turns=dict(self.turn_outcomes),
            audio_in_bytes=self.audio_in_bytes,
            audio_out_bytes=self.audio_out_bytes,
            errors=dict(self.errors),
        )

"""One conversation: its task group, its turns, and the pieces that each own one job.

- ``graph`` (``stages/graph.py``): the stage tasks and their bounded inboxes;
- ``turns`` (``server/turns.py``): the turn counter, live turns, latency marks;
- ``history`` (``server/history.py``): the chat messages, keyed by turn;
- ``playhead`` (``server/playhead.py``): the one playout clock;
- ``outbox`` (``server/outbox.py``): the one writer of the socket;
- ``log`` (``server/replay.py``): ``session_seq`` for every message, and the tail a resume replays;
- ``inputs`` (``server/dispatch.py``): client messages -> graph entries.
The session itself runs them (``run``), watches stage outputs (``observe``: latency marks, barge-in,
the reply text) and interrupts: close the turn (the outbox gate), cancel its in-flight work, drop its
queued output, send ``interrupted``, and cut the history to what was played.
A session can be rebuilt from its ``SessionState`` (``server/state.py``) on any worker: that is resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from typing import Any, Protocol

from server.aec import EchoCanceller, EchoCancellerOptions, available
from server.barge_in import BargeIn
from server.config import SessionDefaults
from server.control import SessionSettings
from server.dispatch import ClientInputs
from server.echo_guard import EchoGuard, EchoGuardOptions
from server.history import History
from server.outbox import Outbox
from server.playhead import Playhead
from server.replay import SessionLog
from server.session_report import SessionReport
from server.state import SessionState
from server.turns import Turn, Turns
from stages.base import ANSWER, ReplyPlan, StageContext
from stages.graph import Graph, stage_error
from stages.items import InputCleared, Item, ReplyDelta, SpeechAudio, Transcription, TurnDone, VadEvent
from stages.registry import StageSpec
from transports import messages as m
from vocab.errors import ProtocolError, VoxpipeError
from vocab.metrics import ERRORS_TOTAL, INTERRUPTIONS_TOTAL, TURNS_TOTAL
from vocab.telemetry import NOOP_SPAN, NOOP_TRACER, Span, Tracer

log = logging.getLogger("voxpipe.session")


class Call(Protocol):
    """A WebRTC call attached to the session (``transports/webrtc.py``): made on the first offer."""

    @property
    def active(self) -> bool: ...

    def offer(self, sdp: str) -> None: ...

    async def close(self) -> None: ...


CallFactory = Callable[["Session"], Call]


class Session:
    def __init__(
        self,
        hello: m.Hello,
        specs: list[StageSpec],
        defaults: SessionDefaults,
        send: m.Send,
        *,
        session_id: str | None = None,
        user: str | None = None,
        restored: SessionState | None = None,
        last_seen_seq: int = 0,
        echo_guard: EchoGuardOptions | None = None,
        echo_canceller: EchoCancellerOptions | None = None,
        calls: CallFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        tracer: Tracer = NOOP_TRACER,
        log_transcripts: bool = False,
    ) -> None:
        self.id = restored.session if restored is not None else session_id or uuid.uuid4().hex[:12]
        self.user = user
        self.hello = hello
        self.specs = specs
        self.defaults = defaults
        self.clock = clock
        self.closed = False
        self.in_rate_hz = hello.audio_in.rate
        self.out_rate_hz = hello.audio_out.rate
        self._socket_send = send
        self.turns = Turns()
        self.history = History(defaults.max_history_messages)
        self.log = SessionLog(max_messages=defaults.replay_max_messages)
        self.resume_token: str | None = None  # set by the server when resume is on
        self.opening_errors: list[m.Error] = []  # sent before ready (a resume that failed)
        self.replay: list[m.Sequenced] = []  # sent right after ready on a resume
        self.playhead = Playhead(
            rate_hz=self.out_rate_hz,
            lead_ms=defaults.lead_ms,
            max_chunks=defaults.outbox_max_items,
            is_live=self.turns.live.__contains__,
            clock=clock,
        )
        self.outbox = Outbox(
            self._send,
            playhead=self.playhead,
            live_turns=self.turns.live,
            finish_turn=self._finish_turn,
            max_items=defaults.outbox_max_items,
        )
        # each turn's trace, the latency histograms and the log lines (server/session_report.py)
        self.report = SessionReport(
            self.id,
            user,
            tracer,
            {s.name: (s.kind, s.engine_name) for s in specs},
            out_rate_hz=self.out_rate_hz,
            log_transcripts=log_transcripts,
            user_text=self._user_text,
            clock=clock,
        )
        # Clients without echo cancellation: a real canceller (AEC3) on the mic, fed the playhead's audio,
        # then the guard, which compares what is left with the same audio.
        self.echo_canceller: EchoCanceller | None = None
        if hello.audio_in.aec is False and echo_canceller is not None and echo_canceller.enabled and available():
            self.echo_canceller = EchoCanceller(echo_canceller, self.playhead, in_rate_hz=self.in_rate_hz, now=clock())
        self.echo_guard = EchoGuard.for_hello(hello, echo_guard, self.playhead)
        options = hello.session or m.SessionOptions()
        self.ctx = StageContext(
            session_id=self.id,
            in_rate_hz=self.in_rate_hz,
            out_rate_hz=self.out_rate_hz,
            system_prompt=options.system_prompt or defaults.system_prompt,
            voice=options.voice or defaults.voice,
            language=options.language or defaults.language,
            conversation=self.history,
            new_turn=self.new_turn,
            is_live=self.turns.live.__contains__,
            spawn=self.spawn,
            reply_plan=self._reply_plan,
            trace=self._turn_span,
        )
        self.settings = SessionSettings()  # changed by a client's ``Configure`` (server/control.py)
        self.graph = Graph(
            specs,
            self.ctx,
            self,
            self.outbox,
            subscribed=subscribed_stages(hello.subscribe, [s.name for s in specs]),
            audio_in_items=max(8, int(defaults.audio_in_queue_ms / 20)),  # ~20 ms messages
            stage_queue_items=defaults.stage_queue_items,
        )
        self.inputs = ClientInputs(self)
        self.barge_in = BargeIn(
            self,
            mode=options.barge_in or defaults.barge_in,
            backchannels=options.backchannels if options.backchannels is not None else defaults.backchannels,
            window_ms=options.barge_in_window_ms or defaults.barge_in_window_ms,
            max_pause_ms=defaults.barge_in_max_pause_ms,
            min_voiced_ms=defaults.barge_in_min_ms,
            echo_words=hello.audio_in.aec is False,
        )
        self._calls = calls
        self.call: Call | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._spawned: set[asyncio.Task[Any]] = set()
        # called with a snapshot at each turn end (the server keeps it in the state store); one at a time
        self.autosave: Callable[[SessionState], Awaitable[None]] | None = None
        self._saving: asyncio.Task[None] | None = None
        self._save_again = False
        if restored is not None:
            self._restore(restored, last_seen_seq)

    def _restore(self, state: SessionState, last_seen_seq: int) -> None:
        """Pick the conversation up from its snapshot: history, settings, counters; what the client missed."""
        self.ctx.system_prompt = state.system_prompt
        self.ctx.voice = state.voice
        self.ctx.language = state.language
        self.history.restore(state.history)
        self.turns.last = state.last_turn
        self.log = SessionLog(
            max_messages=self.defaults.replay_max_messages,
            # a client may have seen messages newer than the snapshot (a worker killed between turn ends)
            last_seq=max(state.last_seq, last_seen_seq),
            tail=state.replay,
            forgotten_seq=state.forgotten_seq,
        )
        self.replay, complete = self.log.since(last_seen_seq)
        if not complete:
            self.error("replay_incomplete", "some messages sent while the client was away are no longer kept")

    def snapshot(self) -> SessionState:
        """The conversation as a resume on any worker restores it (bounded: history and log are)."""
        return SessionState(
            session=self.id,
            user=self.user,
            system_prompt=self.ctx.system_prompt,
            voice=self.ctx.voice,
            language=self.ctx.language,
            history=[(e.turn, e.role, e.content) for e in self.history.entries()],
            last_turn=self.turns.last,
            last_seq=self.log.last_seq,
            replay=self.log.tail(),
            forgotten_seq=self.log.forgotten_seq,
            saved_at=time.time(),
        )

    def stamp(self, message: Any) -> m.Sequenced:
        """``message`` with the session's next ``session_seq`` (logged for a resume unless audio)."""
        return self.log.stamp(message)

    async def _send(self, message: Any) -> None:
        """The outbox's writer: every message gets its ``session_seq`` (and is logged) as it goes out."""
        await self._socket_send(self.log.stamp(message))

    @property
    def live_turns(self) -> Mapping[int, Turn]:
        return self.turns.live

    @property
    def busy(self) -> bool:
        """Not idle: a turn is open (the user is speaking or the agent answering), or a call is up."""
        return bool(self.turns.live) or (self.call is not None and self.call.active)

    def ready(self) -> list[m.Sequenced]:
        """What the connection sends before anything else: errors of the hello (``resume_failed``), then ready."""
        graph = [m.GraphNode(s.name, s.engine_name, s.input_type, s.output_type) for s in self.specs]
        ready = m.Ready(
            session=self.id,
            graph=graph,
            audio_in=self.hello.audio_in,
            audio_out=self.hello.audio_out,
            resume_token=self.resume_token,
            resumed=self.hello.resume is not None and self.hello.resume.session == self.id,
        )
        return [*(self.log.stamp(e) for e in self.opening_errors), self.log.stamp(ready)]

    # ------------------------------------------------------------ lifecycle

    async def run(self, messages: AsyncIterator[Any]) -> None:
        """Run the graph while ``messages`` yields decoded client messages (or ``ProtocolError``s).

        Returns when the client says ``bye`` or the message stream ends; every task has ended then.
        """
        tasks: list[asyncio.Task[Any]] = []
        try:
            for missed in self.replay:  # what the client missed while it was away, before anything new
                await self._socket_send(missed)
            self.replay = []
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tasks.append(tg.create_task(self.outbox.run(), name=f"{self.id}:outbox"))
                tasks += self.graph.start(tg, self.id)
                try:
                    async for message in messages:
                        if isinstance(message, ProtocolError):
                            self.error(message.code, message.message)
                        elif await self.inputs.handle(message) == "bye":
                            break
                finally:
                    self.closed = True
                    for task in [*tasks, *self._spawned]:
                        task.cancel()
        finally:
            self._tg = None
            self.outbox.stop()
            if self.echo_canceller is not None:
                self.echo_canceller.close()
            try:
                if self.call is not None:
                    await self.call.close()
            finally:
                await self.graph.close()

    def hold(self) -> SessionState:
        """The socket dropped (call after ``run``): cut the turns in flight at what was played, as for an
        interruption, log what was still queued for the client (audio aside), and return the snapshot."""
        self.interrupt("disconnect")
        for message in self.outbox.take_unsent():
            self.log.stamp(message)
        self._close_turns()
        return self.snapshot()

    def end(self) -> None:
        """The session is over for good (bye, a fatal close): no turn stays live."""
        self._close_turns()

    def _close_turns(self) -> None:
        """Turns still live when the connection goes (the user was mid-utterance) end ``closed``."""
        now = self.clock()
        for turn in self.turns.live.values():
            self.report.ended(turn, "closed", at=now, first_audio_at=None, audio_out_ms=self._audio_out_ms(turn.id))
        self.turns.live.clear()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """A task in the session's group; a failure is reported to the client, never kills the session."""
        if self._tg is None or self.closed:
            coro.close()
            raise RuntimeError("session is not running")
        task = self._tg.create_task(self._guard(coro))
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        # a task cancelled before its first step never starts ``coro``: close it (no "never awaited" warning)
        task.add_done_callback(lambda _task: coro.close())
        return task

    async def _guard(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stage_failed("session", None, exc)
            return None

    # ------------------------------------------------------------ a WebRTC call (transports/webrtc.py CallHost)

    @property
    def frames(self) -> Playhead:
        return self.playhead

    def attach_track(self, attached: bool) -> None:
        self.playhead.attach_track(attached)

    def caller_audio(self, pcm: bytes) -> None:
        self.inputs.caller_audio(pcm)

    def send_control(self, message: Any) -> None:
        self.outbox.control(message)

    def offer_call(self, sdp: str) -> None:
        """``webrtc_offer``: the first one attaches a call to the session; later ones renegotiate it."""
        if self._calls is None:
            self.error("unsupported", "webrtc_offer: WebRTC is not available on this server")
            return
        if self.call is None:
            self.call = self._calls(self)
        self.call.offer(sdp)

    # ------------------------------------------------------------ turns

    def new_turn(self, *, from_speech: bool = True) -> int:
        turn = self.open_turn(from_speech=from_speech)
        turn.plan = self.settings.plan()
        return turn.id

    def open_turn(self, *, from_speech: bool) -> Turn:
        """A new turn id; the snapshot follows, so a worker killed mid-turn never lets an id be reused."""
        turn = self.turns.new(from_speech=from_speech)
        self._autosave()
        return turn

    def _reply_plan(self, turn_id: int) -> ReplyPlan:
        turn = self.turns.live.get(turn_id)
        return ANSWER if turn is None else turn.plan

    def drop_input(self, turn_id: int) -> None:
        """The user's open utterance was cleared: its turn ends with nothing sent (no audio, no answer)."""
        if self.turns.end(turn_id) is not None:
            self.graph.cancel_turn(turn_id)

    def _finish_turn(self, turn_id: int) -> list[Any]:
        """The last stage is done with ``turn_id`` and its audio has left: metrics, then turn_end."""
        turn = self.turns.end(turn_id)
        if turn is None:
            return []
        if turn.reply_text:
            self.history.set_reply(turn.id, turn.reply_text)
        self.barge_in.turn_gone(turn_id)
        self._autosave()
        TURNS_TOTAL.inc(outcome="end")
        first_audio_at = self.playhead.first_released_at(turn_id)
        self.report.ended(
            turn, "end", at=self.clock(), first_audio_at=first_audio_at, audio_out_ms=self._audio_out_ms(turn_id)
        )
        first, v2v = turn.metrics(first_audio_at)
        out: list[Any] = []
        if turn.responding:
            out.append(m.Metrics(turn=turn_id, first_output_ms=first, voice_to_voice_ms=v2v))
        out.append(m.TurnEnd(turn=turn_id))
        return out

    def _autosave(self) -> None:
        """Keep the snapshot current (at each turn end): one save at a time, the latest state wins."""
        if self.autosave is None or self._tg is None or self.closed:
            return
        if self._saving is not None and not self._saving.done():
            self._save_again = True
            return
        self._saving = self.spawn(self._save_loop())

    async def _save_loop(self) -> None:
        assert self.autosave is not None
        while True:
            self._save_again = False
            await self.autosave(self.snapshot())
            if not self._save_again:
                return

    def interrupt(self, cause: str, *, before_turn: int | None = None) -> list[int]:
        """Cut off every turn the agent is responding to (older than ``before_turn`` when given)."""
        now = self.clock()
        cut = self.turns.responding(before=before_turn)
        for turn in cut:
            self.turns.end(turn.id)  # the gate closes first: nothing of this turn leaves from now on
            played = self.playhead.played_ms(turn.id, now)
            spoken = self.spoken_text(turn, played)
            self.outbox.drop_turn(turn.id, now)
            self.history.cut_reply(turn.id, spoken)
            self.barge_in.turn_gone(turn.id)
            # queued before the cancellations, so the outbox wakes (and tells the client) before the
            # cancelled tasks unwind; an interrupted turn keeps its latency figures up to the cut
            first, v2v = turn.metrics(self.playhead.first_released_at(turn.id))
            self.outbox.control(m.Metrics(turn=turn.id, first_output_ms=first, voice_to_voice_ms=v2v))
            self.outbox.control(m.Interrupted(turn=turn.id, played_ms=round(played, 1), text=spoken))
            self.graph.cancel_turn(turn.id)
            INTERRUPTIONS_TOTAL.inc(cause=cause)
            TURNS_TOTAL.inc(outcome="interrupted")
            self.report.ended(
                turn,
                "interrupted",
                at=now,
                first_audio_at=self.playhead.first_released_at(turn.id),
                audio_out_ms=self._audio_out_ms(turn.id),
                cause=cause,
                played_ms=played,
                spoken=spoken,
            )
        return [t.id for t in cut]

    def _audio_out_ms(self, turn_id: int) -> float:
        line = self.playhead.timeline(turn_id)
        return 0.0 if line is None else line.released_ms

    def _turn_span(self, turn_id: int) -> Span:
        """``StageContext.trace``: the live turn's root span (the no-op one once the turn is over)."""
        turn = self.turns.live.get(turn_id)
        return NOOP_SPAN if turn is None else self.report.turn_span(turn)

    def _user_text(self, turn_id: int) -> str:
        return " ".join(e.content for e in self.history.entries() if e.turn == turn_id and e.role == "user")

    def _drop_backchannel(self, stage: str, item: Transcription) -> None:
        """A "yeah" (or a cough) over the agent: the user's turn ends here, unanswered; the agent went on."""
        dropped = self.turns.end(item.turn)
        if dropped is not None:
            self.report.ended(dropped, "backchannel", at=self.clock(), first_audio_at=None, audio_out_ms=0.0)
        self.graph.cancel_turn(item.turn)
        self.outbox.control(m.Transcript(stage=stage, turn=item.turn, text=item.text, final=True))
        self.outbox.control(m.TurnEnd(turn=item.turn))

    def spoken_text(self, turn: Turn, played_ms: float) -> str:
        """What the user heard of ``turn``'s reply: all of it when the graph speaks no audio (or not this turn)."""
        if not self.graph.has_audio_out or not turn.plan.speak:
            return turn.reply_text
        line = self.playhead.timeline(turn.id)
        return "" if line is None else line.spoken_text(played_ms)

    # ------------------------------------------------------------ stage outputs

    def observe(self, stage: str, item: Item) -> None:
        """Every stage output passes here first (hot path: keep it cheap; items are final classes)."""
        if type(item) is SpeechAudio:
            if self.settings.interrupt_response:  # a client may turn barge-in off (Configure)
                self.barge_in.speech(item)
            speaking = self.turns.live.get(item.turn)
            if speaking is not None:
                speaking.audio_in_ms += len(item.pcm) * 500.0 / item.rate_hz
            return
        if type(item) is InputCleared:
            self.drop_input(item.turn)
            return
        turn_id = item.turn
        if turn_id is None:
            return
        turn = self.turns.live.get(turn_id)
        if turn is None:
            return
        if type(item) is VadEvent:
            if item.event == "speech_end":
                now = self.clock()
                turn.input_end_at = item.voiced_until or now
                turn.mark_output(stage, now)
                self.barge_in.speech_ended(turn_id)
            elif self.settings.interrupt_response:
                self.barge_in.speech_started(turn_id)
            return
        if type(item) is Transcription and self.barge_in.watching and self.barge_in.transcript(item):
            self._drop_backchannel(stage, item)
            return
        if type(item) is ReplyDelta:
            turn.reply_parts.append(item.text)
            if item.final and turn.reply_text:
                self.history.set_reply(turn.id, turn.reply_text)
        # the first output of each stage once the input is complete (the clock is read only then)
        if (
            turn.input_end_at is not None
            and stage not in turn.first_output_at
            and type(item) is not TurnDone
            and item.downstream
        ):
            turn.mark_output(stage, self.clock())

    def stage_failed(self, stage: str, turn: int | None, exc: Exception) -> None:
        """The client gets the stable code and a generic message; the details go to the log (with a traceback
        when the failure was not raised on purpose)."""
        err = stage_error(exc)
        unexpected = not isinstance(exc, VoxpipeError)
        log.warning(
            "session %s: stage %s failed on turn %s: %s: %s",
            self.id,
            stage,
            turn,
            err.code,
            err.message,
            exc_info=exc if unexpected else None,
        )
        live = self.turns.live.get(turn) if turn is not None else None
        if live is not None:
            live.failed = True
        self.error(err.code, f"{stage}: {err.public_message}", turn=turn if live is not None else None)

    def error(self, code: str, message: str, *, turn: int | None = None, fatal: bool = False) -> None:
        ERRORS_TOTAL.inc(code=code)
        self.report.error(code, self.turns.live.get(turn) if turn is not None else None)
        # a client that sends bad messages without reading must not grow the control lane: drop when full
        self.outbox.control(m.Error(code=code, message=message, fatal=fatal, turn=turn), droppable=not fatal)


def subscribed_stages(subscribe: list[str] | str | None, names: list[str]) -> set[str]:
    if subscribe is None or subscribe == "all":
        return set(names)
    if isinstance(subscribe, str):
        subscribe = [subscribe]
    return set(subscribe) & set(names)


def validate_hello(hello: m.Hello, stage_names: list[str]) -> None:
    """Raise ``ProtocolError('bad_field' | 'unknown_stage')`` for a hello the session cannot serve."""
    if hello.protocol != m.PROTOCOL_VERSION:
        raise ProtocolError("bad_field", f"hello.protocol: only version {m.PROTOCOL_VERSION} is supported")
    for name, fmt in (("audio_in", hello.audio_in), ("audio_out", hello.audio_out)):
        if fmt.format != "pcm16":
            raise ProtocolError("bad_field", f"hello.{name}.format: only 'pcm16' is supported")
        if fmt.rate not in m.AUDIO_RATES_HZ:
            rates = "/".join(map(str, m.AUDIO_RATES_HZ))
            raise ProtocolError("bad_field", f"hello.{name}.rate: must be one of {rates}")
        if fmt.channels != 1:
            raise ProtocolError("bad_field", f"hello.{name}.channels: only mono (1) is supported")
    if isinstance(hello.subscribe, list | str) and hello.subscribe != "all":
        wanted = [hello.subscribe] if isinstance(hello.subscribe, str) else hello.subscribe
        unknown = [w for w in wanted if w not in stage_names]
        if unknown:
            raise ProtocolError(
                "unknown_stage",
                f"hello.subscribe: no stage named {unknown[0][:40]!r} (stages: {', '.join(stage_names)})",
            )

"""One conversation: owns its stage graph's tasks, turn counter, history and outbox.

Client messages arrive through ``handle``; stage outputs pass ``observe`` (latency marks, barge-in,
reply text) on their way out. Interruption = close the turn (the outbox gate), cancel its in-flight
work, drop its queued output, send ``interrupted``, and cut the history to what was played.
All tasks live in one TaskGroup: when ``run`` ends, every task of the session has ended.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from server.config import SessionDefaults
from server.echo_guard import EchoGuard, EchoGuardOptions
from server.errors import ProtocolError
from server.metrics import ERRORS_TOTAL, INTERRUPTIONS_TOTAL, TURNS_TOTAL
from server.outbox import Outbox
from server.turns import Turn
from stages.base import StageContext
from stages.graph import Inbox, StageEmitter, StageRunner, put_drop_oldest, stage_error
from stages.items import AudioIn, Commit, Item, ReplyDelta, SpeechAudio, Transcript, TurnDone, VadEvent
from stages.registry import StageSpec
from transports import messages as m

# more than the VAD emits for one frame (speech_start, pre-roll and speech, speech_end, the turn's end)
INLINE_OUTPUTS = 6

log = logging.getLogger("voxpipe.session")
Send = Callable[[Any], Awaitable[None]]
_ids = itertools.count(1)


class Session:
    def __init__(
        self,
        hello: m.Hello,
        specs: list[StageSpec],
        defaults: SessionDefaults,
        send: Send,
        *,
        session_id: str | None = None,
        echo_guard: EchoGuardOptions | None = None,
    ) -> None:
        self.id = session_id or uuid.uuid4().hex[:12]
        self.hello = hello
        self.specs = specs
        self.defaults = defaults
        self.turns: dict[int, Turn] = {}
        self.last_turn = 0
        self.history: list[dict[str, str]] = []
        self.closed = False
        self.in_rate_hz = hello.audio_in.rate
        self.out_rate_hz = hello.audio_out.rate
        self.barge_in_min_ms = defaults.barge_in_min_ms
        self.has_audio_out = bool(specs) and specs[-1].output_type == "audio"
        self._tg: asyncio.TaskGroup | None = None
        self._speech_entry: tuple[int, int] | None = None  # (stage index, open turn) for entries at ASR
        self.audio_in_dropped = 0
        # Clients without echo cancellation: the agent's audio leaving through ``send`` is the reference
        # the guard compares the mic with (see server/echo_guard.py).
        self.echo_guard = EchoGuard.for_hello(hello, echo_guard, time.monotonic())
        if self.echo_guard is not None:
            send = self.echo_guard.tap(send, time.monotonic)
        options = hello.session or m.SessionOptions()
        self.ctx = StageContext(
            session_id=self.id,
            in_rate_hz=self.in_rate_hz,
            out_rate_hz=self.out_rate_hz,
            system_prompt=options.system_prompt or defaults.system_prompt,
            voice=options.voice or defaults.voice,
            language=options.language or defaults.language,
            history=self.history,
            new_turn=self.new_turn,
            is_live=self.turns.__contains__,
            spawn=self.spawn,
        )
        self.outbox = Outbox(
            send,
            turns=self.turns,
            finish_turn=self._finish_turn,
            lead_ms=defaults.lead_ms,
            max_items=defaults.outbox_max_items,
        )
        self._input_types = [spec.input_type for spec in specs]
        # where client audio enters: the first stage that takes raw audio or speech
        self._audio_index = next((i for i, t in enumerate(self._input_types) if t in ("audio", "speech")), None)
        subscribed = subscribed_stages(hello.subscribe, [s.name for s in specs])
        # Overflow policy per edge: raw client audio (counted in ~20 ms messages) drops the oldest,
        # every other edge blocks its producer (text is never dropped).
        audio_items = max(8, int(defaults.audio_in_queue_ms / 20))
        self.inboxes: list[Inbox[Any]] = [
            Inbox(audio_items if spec.input_type == "audio" else defaults.stage_queue_items)
            for spec in specs
        ]
        self._spawned: set[asyncio.Task[Any]] = set()
        self.runners: list[StageRunner] = []
        for i, spec in enumerate(specs):
            nxt = self.inboxes[i + 1] if i + 1 < len(specs) else None
            emitter = StageEmitter(spec.name, self, self.outbox, nxt, spec.name in subscribed)
            stage = spec.engine.new_stage(self.ctx)
            self.runners.append(StageRunner(spec.name, stage, self.inboxes[i], emitter, self))
        for upstream, downstream in zip(self.runners, self.runners[1:], strict=False):
            # Only from a non-interruptible stage: an interrupted child task must not cut a cheap stage's work.
            if downstream.inlinable and not upstream.stage.interruptible:
                upstream.emitter.inline_next = downstream

    @property
    def busy(self) -> bool:
        """A turn is open (the user is speaking or the agent is answering): the session is not idle."""
        return bool(self.turns)

    def ready(self) -> m.Ready:
        graph = [m.GraphNode(s.name, s.engine_name, s.input_type, s.output_type) for s in self.specs]
        return m.Ready(session=self.id, graph=graph, audio_in=self.hello.audio_in, audio_out=self.hello.audio_out)

    # ------------------------------------------------------------ lifecycle

    async def run(self, messages: AsyncIterator[Any]) -> None:
        """Run the graph while ``messages`` yields decoded client messages (or ``ProtocolError``s).

        Returns when the client says ``bye`` or the message stream ends; every task has ended then.
        """
        tasks: list[asyncio.Task[Any]] = []
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tasks.append(tg.create_task(self.outbox.run(), name=f"{self.id}:outbox"))
                for runner in self.runners:
                    tasks.append(tg.create_task(runner.run(), name=f"{self.id}:{runner.name}"))
                try:
                    async for message in messages:
                        if isinstance(message, ProtocolError):
                            self.error(message.code, message.message)
                        elif await self.handle(message) == "bye":
                            break
                finally:
                    self.closed = True
                    for task in [*tasks, *self._spawned]:
                        task.cancel()
        finally:
            self._tg = None
            self.turns.clear()
            for runner in self.runners:
                await runner.stage.close()

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

    # ------------------------------------------------------------ turns

    def new_turn(self, *, from_speech: bool = True) -> int:
        self.last_turn += 1
        self.turns[self.last_turn] = Turn(self.last_turn, from_speech=from_speech)
        return self.last_turn

    def _finish_turn(self, turn_id: int) -> list[Any]:
        """The last stage is done with ``turn_id`` and its audio has left: metrics, then turn_end."""
        turn = self.turns.pop(turn_id, None)
        if turn is None:
            return []
        self._record_reply(turn)
        TURNS_TOTAL.inc(outcome="end")
        first, v2v = turn.metrics()
        out: list[Any] = []
        if turn.responding:
            out.append(m.Metrics(turn=turn_id, first_output_ms=first, voice_to_voice_ms=v2v))
        out.append(m.TurnEnd(turn=turn_id))
        return out

    def _record_reply(self, turn: Turn) -> None:
        if turn.history_index is None and turn.reply_text:
            self.history.append({"role": "assistant", "content": turn.reply_text})
            turn.history_index = len(self.history) - 1
        limit = self.defaults.max_history_messages
        if len(self.history) > limit:
            del self.history[: len(self.history) - limit]
            for t in self.turns.values():
                t.history_index = None if t.history_index is None else t.history_index - (len(self.history) - limit)

    def interrupt(self, cause: str, *, before_turn: int | None = None) -> list[int]:
        """Cut off every turn the agent is responding to (older than ``before_turn`` when given)."""
        now = time.monotonic()
        cut = [t for t in self.turns.values() if t.responding and (before_turn is None or t.id < before_turn)]
        for turn in cut:
            del self.turns[turn.id]  # the gate closes first: nothing of this turn leaves from now on
            self.outbox.drop_turn(turn.id)
            played = turn.played_ms(now)
            spoken = turn.spoken_text(played, has_audio=self.has_audio_out)
            self._cut_history(turn, spoken)
            # queued before the cancellations, so the outbox wakes (and tells the client) before the
            # cancelled tasks unwind
            self.outbox.control(m.Interrupted(turn=turn.id, played_ms=round(played, 1), text=spoken))
            for runner in self.runners:
                runner.cancel_turn(turn.id)
            INTERRUPTIONS_TOTAL.inc(cause=cause)
            TURNS_TOTAL.inc(outcome="interrupted")
        return [t.id for t in cut]

    def _cut_history(self, turn: Turn, spoken: str) -> None:
        index = turn.history_index
        if index is not None and index < len(self.history):
            if spoken:
                self.history[index] = {"role": "assistant", "content": spoken}
            elif index == len(self.history) - 1:
                self.history.pop()
            else:
                self.history[index] = {"role": "assistant", "content": ""}
        elif spoken:
            self.history.append({"role": "assistant", "content": spoken})

    # ------------------------------------------------------------ stage outputs

    def observe(self, stage: str, item: Item) -> None:
        """Every stage output passes here first (hot path: keep it cheap; items are final classes)."""
        if type(item) is SpeechAudio:
            if item.voiced_ms >= self.barge_in_min_ms and self._agent_busy(item.turn):
                self.interrupt("barge_in", before_turn=item.turn)
            return
        turn_id = item.turn
        if turn_id is None:
            return
        turn = self.turns.get(turn_id)
        if turn is None:
            return
        if type(item) is VadEvent:
            if item.event == "speech_end":
                now = time.monotonic()
                turn.input_end_at = item.voiced_until or now
                turn.mark_output(stage, now)
            return
        if type(item) is ReplyDelta:
            turn.reply_parts.append(item.text)
            if item.final:
                self._record_reply(turn)
        # the first output of each stage once the input is complete (the clock is read only then)
        if (
            turn.input_end_at is not None
            and stage not in turn.first_output_at
            and type(item) is not TurnDone
            and item.downstream
        ):
            turn.mark_output(stage, time.monotonic())

    def _agent_busy(self, user_turn: int) -> bool:
        return any(t.responding and t.id < user_turn for t in self.turns.values())

    def stage_failed(self, stage: str, turn: int | None, exc: Exception) -> None:
        err = stage_error(exc)
        if not isinstance(exc, type(err)) or err.code == "stage_failed":
            log.warning("session %s: stage %s failed on turn %s: %r", self.id, stage, turn, exc)
        if turn is not None and turn in self.turns:
            self.turns[turn].failed = True
        self.error(err.code, f"{stage}: {err.message}", turn=turn if turn in self.turns else None)

    def error(self, code: str, message: str, *, turn: int | None = None, fatal: bool = False) -> None:
        ERRORS_TOTAL.inc(code=code)
        # a client that sends bad messages without reading must not grow the control lane: drop when full
        self.outbox.control(m.Error(code=code, message=message, fatal=fatal, turn=turn), droppable=not fatal)

    # ------------------------------------------------------------ client messages

    async def handle(self, msg: Any) -> str | None:
        """Act on one decoded client message; returns ``"bye"`` when the session should end."""
        kind = type(msg)
        if kind is m.Audio:
            await self._audio(msg.data, self._audio_entry())
        elif kind is m.Played:
            turn = self.turns.get(msg.turn)
            if msg.ms < 0:
                self.error("bad_field", "played.ms: must be >= 0")
            elif turn is not None:
                turn.played_ack_ms = max(turn.played_ack_ms or 0.0, msg.ms)
                if self.echo_guard is not None:
                    self.echo_guard.played(msg.turn, msg.ms, time.monotonic())
        elif kind is m.Text:
            await self._text(msg.text, self._entry_of_kind("llm", "text"))
        elif kind is m.Say:
            await self._text(msg.text, self._entry_of_kind("tts", "say"))
        elif kind is m.Input:
            await self._input(msg)
        elif kind is m.Commit:
            await self._commit()
        elif kind is m.Interrupt:
            self.interrupt("client")
        elif kind is m.Ping:
            self.outbox.control(m.Pong(id=msg.id), droppable=True)
        elif kind is m.Bye:
            return "bye"
        elif kind is m.Hello:
            self.error("duplicate_hello", "hello was already received; this session is set up")
        else:
            self.error("unsupported", f"{msg.type} is not supported on this transport")
        return None

    def _entry_of_kind(self, kind: str, what: str) -> int | None:
        for i, spec in enumerate(self.specs):
            if spec.kind == kind:
                return i
        self.error("unknown_stage", f"{what}: this graph has no {kind} stage")
        return None

    def _audio_entry(self) -> int | None:
        if self._audio_index is None:
            self.error("unknown_stage", "audio: this graph has no audio stage")
        return self._audio_index

    async def _audio(self, pcm: bytes, index: int | None) -> None:
        if index is None:
            return
        if not pcm or len(pcm) % 2:
            self.error("bad_audio", f"audio: {len(pcm)} bytes is not a whole number of PCM16 samples (> 0)")
            return
        now = time.monotonic()
        if self._input_types[index] == "audio":
            if self.echo_guard is not None:
                pcm = self.echo_guard.process(pcm, now)  # echo-only frames silenced before the VAD
                if not pcm:
                    return
            item = AudioIn(pcm, self.in_rate_hz, now)
            runner = self.runners[index]
            # An idle cheap first stage (VAD) takes the frame in this task, but only when its outputs
            # (fewer than INLINE_OUTPUTS per frame) fit: the reader must never wait on a slow stage, it
            # keeps reading interrupts; a busy graph gets the drop-oldest inbox, as before.
            if runner.emitter.has_room(INLINE_OUTPUTS) and runner.try_inline():
                await runner.run_inline(item)
            elif put_drop_oldest(self.inboxes[index], item, "audio_in"):
                self.audio_in_dropped += 1
            return
        if self._speech_entry is None or self._speech_entry[0] != index:
            await self._commit()
            self._speech_entry = (index, self.new_turn(from_speech=True))
        turn = self._speech_entry[1]
        await self.inboxes[index].put(SpeechAudio(turn, pcm, self.in_rate_hz))

    async def _text(self, text: str, index: int | None) -> None:
        if index is None:
            return
        if not text.strip():
            self.error("bad_field", "text: must not be empty")
            return
        turn_id = self.new_turn(from_speech=False)
        turn = self.turns[turn_id]
        turn.input_end_at = time.monotonic()
        item: Item
        if self.specs[index].kind == "tts":
            item = ReplyDelta(turn_id, text, final=True)  # the agent says exactly this
            turn.reply_parts.append(text)
            self._record_reply(turn)
        else:
            item = Transcript(turn_id, text, final=True)
        await self.inboxes[index].put(item)
        await self.inboxes[index].put(TurnDone(turn_id))

    async def _input(self, msg: m.Input) -> None:
        index = self._resolve_entry(msg)
        if index is None:
            return
        spec = self.specs[index]
        if spec.input_type in ("audio", "speech"):
            data = msg.data
            if isinstance(data, str):
                try:
                    data = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    self.error("bad_field", "input.data: audio must be bytes (or base64 in JSON)")
                    return
            await self._audio(data, index)
        else:
            if isinstance(msg.data, bytes):
                try:
                    text = msg.data.decode("utf-8")
                except UnicodeDecodeError:
                    self.error("bad_field", "input.data: text must be a UTF-8 string")
                    return
            else:
                text = msg.data
            await self._text(text, index)

    def _resolve_entry(self, msg: m.Input) -> int | None:
        if msg.stage is not None:
            for i, spec in enumerate(self.specs):
                if spec.name == msg.stage:
                    return i
            names = ", ".join(s.name for s in self.specs)
            self.error("unknown_stage", f"input.stage: no stage named {msg.stage[:40]!r} (stages: {names})")
            return None
        if msg.entry is not None:
            if 0 <= msg.entry < len(self.specs):
                return msg.entry
            self.error("unknown_stage", f"input.entry: {msg.entry} is not an index into ready.graph")
            return None
        self.error("bad_field", "input: needs 'stage' or 'entry'")
        return None

    async def _commit(self) -> None:
        now = time.monotonic()
        if self._speech_entry is not None:
            index, turn_id = self._speech_entry
            self._speech_entry = None
            turn = self.turns.get(turn_id)
            if turn is not None:
                turn.input_end_at = now
                await self.inboxes[index].put(TurnDone(turn_id))
            return
        entry = self._audio_entry()
        if entry is not None and self.specs[entry].input_type == "audio":
            put_drop_oldest(self.inboxes[entry], Commit(now), "audio_in")


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

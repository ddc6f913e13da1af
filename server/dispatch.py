"""Client messages -> the session's graph: where each one enters (audio at the VAD, text at the LLM, ...).

Bad input gets a non-fatal ``error`` and changes nothing; the conversation goes on. The session-level
requests of a second dialect (settings, history edits, answers on request) are ``server/control.py``'s.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import TYPE_CHECKING, Any

from server.control import Control
from stages.items import AudioIn, Item, ReplyDelta, SpeechAudio, Transcription, TurnDone, UserCommit
from transports import messages as m

if TYPE_CHECKING:
    from server.session import Session


class ClientInputs:
    """The session's side of every client message (``handle``), one message at a time."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.graph = session.graph
        self.control = Control(session)  # the session-level requests of a second wire dialect
        self._speech_entry: tuple[int, int] | None = None  # (stage index, open turn) for entries at ASR
        # An open speech entry is committed by the client, or after the stage's max_utterance_ms by this timer
        # (a client that never commits must not keep the session busy for ever). The lock keeps the timer's
        # end of the turn after any of its audio the reader is still handing in.
        self._speech_expiry: asyncio.Task[Any] | None = None
        self._speech_lock = asyncio.Lock()

    async def handle(self, msg: Any) -> str | None:
        """Act on one decoded client message; returns ``"bye"`` when the session should end."""
        session = self.session
        kind = type(msg)
        if kind is m.Audio:
            session.report.audio_in_bytes += len(msg.data)
            await self._audio(msg.data, self._audio_entry())
        elif kind is m.Played:
            if msg.ms < 0:
                session.error("bad_field", "played.ms: must be >= 0")
            elif msg.turn in session.turns.live:
                session.playhead.ack(msg.turn, msg.ms, session.clock())
        elif kind is m.Text:
            await self._text(msg.text, self._entry_of_kind("llm", "text"))
        elif kind is m.Say:
            await self._text(msg.text, self._entry_of_kind("tts", "say"))
        elif kind is m.Input:
            await self._input(msg)
        elif kind is m.Commit:
            await self._commit()
        elif kind is m.Interrupt:
            session.interrupt("client")
        elif kind is m.Ping:
            session.outbox.control(m.Pong(id=msg.id), droppable=True)
        elif kind is m.WebrtcOffer:
            session.offer_call(msg.sdp)
        elif kind is m.Bye:
            return "bye"
        elif kind is m.Relay:
            session.outbox.control(msg.message, droppable=True)  # a reader that falls this far behind loses acks
        elif kind in m.SESSION_REQUESTS:
            await self.control.handle(msg)
        elif kind is m.Hello:
            session.error("duplicate_hello", "hello was already received; this session is set up")
        else:
            session.error("unsupported", f"{msg.type} is not supported on this transport")
        return None

    def caller_audio(self, pcm: bytes) -> None:
        """Audio from a WebRTC call: into the first audio stage, never waiting (drop-oldest when full)."""
        index = self.graph.audio_entry
        if index is None or not pcm or self.graph.specs[index].input_type != "audio":
            return
        self.session.report.audio_in_bytes += len(pcm)
        now = self.session.clock()
        pcm = self._without_echo(pcm, now)
        if pcm:
            self.graph.feed_audio_nowait(index, AudioIn(pcm, self.session.in_rate_hz, now))

    def _without_echo(self, pcm: bytes, now: float) -> bytes:
        """Mic audio of a client with no echo cancellation: the canceller, then the guard (either may hold
        back part of a frame until the rest arrives, so what comes out may be shorter, or empty)."""
        session = self.session
        if session.echo_canceller is not None:
            pcm = session.echo_canceller.process(pcm, now)
        if session.echo_guard is not None and pcm:
            pcm = session.echo_guard.process(pcm, now)  # echo-only frames silenced before the VAD
        return pcm

    # ------------------------------------------------------------ entries

    def _entry_of_kind(self, kind: str, what: str) -> int | None:
        index = self.graph.index_of_kind(kind)
        if index is None:
            self.session.error("unknown_stage", f"{what}: this graph has no {kind} stage")
        return index

    def _audio_entry(self) -> int | None:
        index = self.graph.audio_entry
        if index is None:
            self.session.error("unknown_stage", "audio: this graph has no audio stage")
        return index

    def _resolve_entry(self, msg: m.Input) -> int | None:
        session = self.session
        if msg.stage is not None:
            index = self.graph.index_of(msg.stage)
            if index is None:
                names = ", ".join(s.name for s in self.graph.specs)
                session.error("unknown_stage", f"input.stage: no stage named {msg.stage[:40]!r} (stages: {names})")
            return index
        if msg.entry is not None:
            if 0 <= msg.entry < len(self.graph.specs):
                return msg.entry
            session.error("unknown_stage", f"input.entry: {msg.entry} is not an index into ready.graph")
            return None
        session.error("bad_field", "input: needs 'stage' or 'entry'")
        return None

    # ------------------------------------------------------------ kinds of input

    async def _audio(self, pcm: bytes, index: int | None) -> None:
        if index is None:
            return
        session = self.session
        if not pcm or len(pcm) % 2:
            session.error("bad_audio", f"audio: {len(pcm)} bytes is not a whole number of PCM16 samples (> 0)")
            return
        now = session.clock()
        if self.graph.specs[index].input_type == "audio":
            pcm = self._without_echo(pcm, now)
            if pcm:
                await self.graph.feed_audio(index, AudioIn(pcm, session.in_rate_hz, now))
            return
        async with self._speech_lock:
            entry = self._speech_entry
            if entry is None or entry[0] != index:
                await self._end_speech_entry()
                entry = self._speech_entry = (index, session.new_turn(from_speech=True))
                max_s = float(self.graph.specs[index].option("max_utterance_ms", 30000.0)) / 1000.0
                self._speech_expiry = session.spawn(self._expire_speech_entry(entry, max_s))
            await self.graph.put(index, SpeechAudio(turn=entry[1], pcm=pcm, rate_hz=session.in_rate_hz))

    async def _text(self, text: str, index: int | None) -> None:
        if index is None:
            return
        session = self.session
        if not text.strip():
            session.error("bad_field", "text: must not be empty")
            return
        turn = session.open_turn(from_speech=False)
        turn.input_end_at = session.clock()
        item: Item
        if self.graph.specs[index].kind == "tts":
            item = ReplyDelta(turn.id, text, final=True)  # the agent says exactly this
            turn.reply_parts.append(text)
            session.history.set_reply(turn.id, turn.reply_text)
        else:
            item = Transcription(turn.id, text, final=True)
        await self.graph.put(index, item)
        await self.graph.put(index, TurnDone(turn.id))

    async def _input(self, msg: m.Input) -> None:
        index = self._resolve_entry(msg)
        if index is None:
            return
        session = self.session
        if self.graph.specs[index].input_type in ("audio", "speech"):
            data = msg.data
            if isinstance(data, str):
                try:
                    data = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError):
                    session.error("bad_field", "input.data: audio must be bytes (or base64 in JSON)")
                    return
            await self._audio(data, index)
            return
        if isinstance(msg.data, bytes):
            try:
                text = msg.data.decode("utf-8")
            except UnicodeDecodeError:
                session.error("bad_field", "input.data: text must be a UTF-8 string")
                return
        else:
            text = msg.data
        await self._text(text, index)

    async def _commit(self) -> None:
        if self._speech_entry is not None:
            async with self._speech_lock:
                await self._end_speech_entry()
            return
        entry = self._audio_entry()
        if entry is not None and self.graph.specs[entry].input_type == "audio":
            self.graph.feed_audio_nowait(entry, UserCommit(self.session.clock()))

    async def _end_speech_entry(self) -> None:
        """The open speech entry's input is complete (the caller holds ``_speech_lock``)."""
        entry, self._speech_entry = self._speech_entry, None
        expiry, self._speech_expiry = self._speech_expiry, None
        if expiry is not None and expiry is not asyncio.current_task():
            expiry.cancel()
        if entry is None:
            return
        index, turn_id = entry
        turn = self.session.turns.get(turn_id)
        if turn is not None:
            turn.input_end_at = self.session.clock()
            await self.graph.put(index, TurnDone(turn_id))

    async def _expire_speech_entry(self, entry: tuple[int, int], after_s: float) -> None:
        await asyncio.sleep(after_s)  # a timer, not synchronisation: the client had its max_utterance_ms
        async with self._speech_lock:
            if self._speech_entry == entry:
                await self._end_speech_entry()

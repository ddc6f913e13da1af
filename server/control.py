"""Session-level requests beyond wire contract v1: settings, history edits, answers on request, clearing input.

A second wire dialect (the OpenAI Realtime events, ``transports/realtime.py``) asks these of the session as
plain messages (``transports/messages.py``, "session-level requests"); nothing here knows which dialect
asked. Requests that open a turn or may be refused carry a ``ref`` and get an ``Ack`` (control lane, so it
goes out before anything of the turn it names). Bad references find nothing and change nothing: the
dialect checks the names it gave out, and the history may have trimmed a message since.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from stages.base import ReplyPlan, VadOverrides
from stages.items import SpeechAudio, TurnDone, UserClear
from transports import messages as m

if TYPE_CHECKING:
    from server.session import Session


@dataclass(slots=True)
class SessionSettings:
    """How the session answers, as a client set it (``Configure``); the defaults are /ws behaviour."""

    create_response: bool = True  # a finished utterance is answered
    interrupt_response: bool = True  # voice over the agent cuts it off
    speak: bool = True  # answers are spoken (False: text only)

    def plan(self) -> ReplyPlan:
        """The plan of a turn the user starts by speaking."""
        return ReplyPlan(reply=self.create_response, speak=self.speak)


class Control:
    """The session's side of the session-level requests, one at a time, in the reader's task."""

    def __init__(self, session: Session) -> None:
        self.session = session

    async def handle(self, msg: object) -> None:
        kind = type(msg)
        if isinstance(msg, m.Configure):
            self._configure(msg)
        elif isinstance(msg, m.AddMessage):
            self._add_message(msg)
        elif isinstance(msg, m.AddAudio):
            await self._add_audio(msg)
        elif isinstance(msg, m.DeleteItem):
            self._delete(msg.item)
        elif isinstance(msg, m.TruncateReply):
            self._truncate(msg.turn, msg.audio_ms)
        elif isinstance(msg, m.CreateResponse):
            await self._create_response(msg)
        elif isinstance(msg, m.ClearInput):
            self._clear_input()
        else:
            raise TypeError(f"not a session-level request: {kind.__name__}")

    # ------------------------------------------------------------ settings

    def _configure(self, msg: m.Configure) -> None:
        session, ctx = self.session, self.session.ctx
        if msg.system_prompt is not None:
            ctx.system_prompt = msg.system_prompt
        if msg.voice is not None:
            ctx.voice = msg.voice
        if msg.language is not None:
            ctx.language = msg.language
        if msg.speak is not None:
            session.settings.speak = msg.speak
        detection = msg.turn_detection
        if detection is not None:
            session.settings.create_response = detection.create_response
            session.settings.interrupt_response = detection.interrupt_response
            ctx.vad = VadOverrides(  # the VAD stage sees a new object and applies it at its next frame
                manual=detection.manual,
                end_ms=detection.silence_ms,
                pre_roll_ms=detection.prefix_ms,
                threshold=detection.threshold,
            )

    # ------------------------------------------------------------ the conversation

    def _find(self, ref: m.ItemRef) -> int | None:
        return self.session.history.find(item=ref.item, turn=ref.turn, role=ref.role)

    def _add_message(self, msg: m.AddMessage) -> None:
        at: int | None = None
        if msg.first:
            at = 0
        elif msg.after is not None:
            found = self._find(msg.after)
            at = None if found is None else found + 1
        self.session.history.add_item(msg.item, msg.role, msg.text, at=at, turn=self.session.turns.last)

    def _delete(self, ref: m.ItemRef) -> None:
        index = self._find(ref)
        if index is not None:
            self.session.history.remove_at(index)

    def _truncate(self, turn_id: int, audio_ms: float) -> None:
        """The client heard ``audio_ms`` of the turn's answer: a live turn is cut off there (as an interruption
        with that ``played``); an ended one has its message cut to the words spoken by then."""
        session = self.session
        now = session.clock()
        if any(t.id == turn_id for t in session.turns.responding()):
            session.playhead.ack(turn_id, audio_ms, now)
            session.interrupt("truncate", before_turn=turn_id + 1)
            return
        line = session.playhead.timeline(turn_id)
        if line is not None and audio_ms < line.released_ms:
            session.history.cut_reply(turn_id, line.spoken_text(audio_ms))

    async def _add_audio(self, msg: m.AddAudio) -> None:
        """Transcribe ``pcm`` into the conversation as the user's words of a new turn that is not answered."""
        session = self.session
        index = next((i for i, s in enumerate(session.graph.specs) if s.input_type == "speech"), None)
        if index is None:
            session.outbox.control(m.Ack(ref=msg.ref, code="unsupported", message="this graph has no speech stage"))
            return
        turn = session.open_turn(from_speech=False)
        turn.plan = ReplyPlan(reply=False)
        turn.input_end_at = session.clock()
        session.outbox.control(m.Ack(ref=msg.ref, turn=turn.id))
        await session.graph.put(index, SpeechAudio(turn=turn.id, pcm=msg.pcm, rate_hz=session.in_rate_hz))
        await session.graph.put(index, TurnDone(turn.id))

    # ------------------------------------------------------------ answers and input

    async def _create_response(self, msg: m.CreateResponse) -> None:
        """A turn with no input of its own, answered from the history. It enters at the first stage, as a bare
        ``TurnDone``, so it queues behind the user's committed audio still in the VAD or ASR."""
        session = self.session
        running = session.turns.responding()
        if running:
            message = f"the agent is already answering turn {running[0].id}; wait for it or cancel it"
            session.outbox.control(m.Ack(ref=msg.ref, code="conversation_already_has_active_response", message=message))
            return
        if session.graph.index_of_kind("llm") is None:
            session.outbox.control(m.Ack(ref=msg.ref, code="unsupported", message="this graph has no llm stage"))
            return
        turn = session.open_turn(from_speech=False)
        speak = session.settings.speak if msg.speak is None else msg.speak
        turn.plan = ReplyPlan(speak=speak, from_history=True, instructions=msg.instructions)
        turn.input_end_at = session.clock()
        session.outbox.control(m.Ack(ref=msg.ref, turn=turn.id))
        await session.graph.put(0, TurnDone(turn.id))

    def _clear_input(self) -> None:
        session = self.session
        index = session.graph.audio_entry
        if index is not None and session.graph.specs[index].input_type == "audio":
            session.graph.feed_audio_nowait(index, UserClear(session.clock()))

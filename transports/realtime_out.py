"""The session's server messages as Realtime events, in the order the API documents, and the items they name.

One ``Translator`` per connection keeps what the events need across messages: the conversation's items
(ids given out here, each mapped to the session's ``ItemRef``), the user item of each spoken turn, and the
response of each answered turn. A response goes

    response.created, rate_limits.updated,
    response.output_item.added, conversation.item.added (GA) / .created (beta), response.content_part.added,
    transcript (or text) deltas and audio deltas as the session sends them,
    the .done of each (audio, transcript/text, content part, output item, GA conversation.item.done),
    response.done (completed, cancelled with turn_detected / client_cancelled, or failed) with its usage.

A turn ends once (``turn_end`` or ``interrupted``), so does its response: nothing of a response is sent
after its ``response.done`` (the session's outbox already keeps that rule; this keeps it again).
Unknown server messages and unknown fields are ignored.
"""

from __future__ import annotations

import base64
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transports import g711
from transports import messages as m
from transports.realtime_config import RealtimeConfig
from transports.realtime_vocab import (
    Event,
    Vocab,
    assistant_item,
    assistant_part,
    error_event,
    message_item,
    usage,
    user_item,
)

KEEP_FINISHED_TURNS = 64  # turns whose response is done: any later output of theirs is dropped
MAX_ITEMS = 512  # item names kept (the session's history keeps far fewer messages); the oldest go first
# Session error codes that are the server's side, not the client's (``server_error`` in the API).
SERVER_CODES = ("stage_failed", "internal", "slow_reader", "going_away")


class Ids:
    """Ids unique within the connection, OpenAI-style (``item_…``, ``resp_…``)."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(5)
        self.count = 0

    def new(self, kind: str) -> str:
        self.count += 1
        return f"{kind}_{self.tag}{self.count:05d}"


@dataclass(slots=True)
class Item:
    id: str
    role: str
    ref: m.ItemRef  # how the session names it
    audio: bool = False
    audio_ms: float = 0.0  # user audio: its duration (for the transcription's usage)
    response: str | None = None  # an answer: its response id, while the response runs


@dataclass(slots=True)
class Response:
    id: str
    turn: int
    speak: bool
    item: Item | None = None  # the answer, once it has output
    parts: list[str] = field(default_factory=list)  # text deltas as sent
    audio_ms: float = 0.0
    error: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Pending:
    """A request the session will ``Ack``: a response (``item`` None) or an audio item to transcribe."""

    event_id: str | None
    item: str | None = None
    speak: bool | None = None  # a response's own modalities (None: the session's)
    response: str | None = None  # a response's id, given out before the session made its turn


class Translator:
    """Not thread-safe; one per connection, driven by ``RealtimeConnection``."""

    def __init__(self, vocab: Vocab, config: Callable[[], RealtimeConfig], ids: Ids) -> None:
        self.vocab = vocab
        self.config = config
        self.ids = ids
        self.conversation_id = ids.new("conv")
        self.items: dict[str, Item] = {}
        self.order: list[str] = []  # item ids in conversation order (for previous_item_id)
        self.user_items: dict[int, Item] = {}  # turn -> the user item its input became
        self.responses: dict[int, Response] = {}  # turn -> its response, until response.done
        self.pending: dict[str, Pending] = {}
        self.cancelling = False  # the client asked to cancel: the next cut is client_cancelled
        self._finished: deque[int] = deque(maxlen=KEEP_FINISHED_TURNS)
        self._heard: dict[int, str] = {}  # turn -> transcription deltas sent so far
        self._downsampler: g711.Downsampler | None = None
        self.rate_limits: Callable[[], list[dict[str, Any]]] = list

    # ------------------------------------------------------------ the registry (input side uses it too)

    def add_item(self, item: Item, *, after: str | None = None, first: bool = False) -> str | None:
        """Register ``item`` in conversation order; returns its previous item's id."""
        self.items[item.id] = item
        at = 0 if first else (self.order.index(after) + 1 if after in self.order else len(self.order))
        self.order.insert(at, item.id)
        previous = self.order[at - 1] if at > 0 else None
        while len(self.order) > MAX_ITEMS:
            self.forget(self.order[0])
        return previous

    def forget_uncommitted(self) -> None:
        """The input was cleared: utterances that never reached the conversation are forgotten."""
        for turn, item in list(self.user_items.items()):
            if item.id not in self.items:
                del self.user_items[turn]

    def forget(self, item_id: str) -> None:
        self.items.pop(item_id, None)
        if item_id in self.order:
            self.order.remove(item_id)

    def _previous(self, item_id: str) -> str | None:
        at = self.order.index(item_id) if item_id in self.order else 0
        return self.order[at - 1] if at > 0 else None

    def active(self) -> Response | None:
        return next(iter(self.responses.values()), None)

    def pending_response(self) -> str | None:
        """The id of a response asked for and not yet started by the session, if any."""
        return next((p.response for p in self.pending.values() if p.item is None), None)

    def output_format_changed(self) -> None:
        self._downsampler = None

    def item_events(self, item: Item, previous: str | None, content: dict[str, Any]) -> list[Event]:
        """An item joined the conversation: GA ``conversation.item.added`` then ``.done``, beta ``.created``."""
        names = [self.vocab.item_added] + ([self.vocab.item_done] if self.vocab.item_done else [])
        return [Event({"type": name, "previous_item_id": previous, "item": content}) for name in names]

    # ------------------------------------------------------------ server messages -> events

    def events(self, message: Any) -> list[Event]:
        handler = _HANDLERS.get(type(message))
        return [] if handler is None else handler(self, message)

    def _vad(self, msg: m.Vad) -> list[Event]:
        manual = self.config().turn_detection is None
        at_ms = round(msg.audio_ms or 0.0)
        out: list[Event] = []
        if msg.event == "speech_start":
            item = Item(self.ids.new("item"), "user", m.ItemRef(turn=msg.turn, role="user"), audio=True)
            item.audio_ms = -at_ms
            self.user_items[msg.turn] = item
            if not manual:
                out.append(
                    Event({"type": "input_audio_buffer.speech_started", "audio_start_ms": at_ms, "item_id": item.id})
                )
            return out
        started = self.user_items.get(msg.turn)
        if started is None:
            return []
        item = started
        item.audio_ms += at_ms
        if not manual:
            out.append(Event({"type": "input_audio_buffer.speech_stopped", "audio_end_ms": at_ms, "item_id": item.id}))
        previous = self.add_item(item)
        out.append(Event({"type": "input_audio_buffer.committed", "previous_item_id": previous, "item_id": item.id}))
        out += self.item_events(item, previous, user_item(self.vocab, item.id, audio=True))
        detection = self.config().turn_detection
        if detection is not None and detection.create_response:
            out += self.start_response(msg.turn)
        return out

    def _transcript(self, msg: m.Transcript) -> list[Event]:
        item = self.user_items.get(msg.turn)
        if item is None or self.config().transcription is None:
            return []
        if not msg.final:
            # partials are whole re-decodes: only what extends the words already sent becomes a delta (a
            # partial that revises earlier words is skipped; the completed transcript is the whole truth)
            heard = self._heard.get(msg.turn, "")
            if not msg.text.startswith(heard) or len(msg.text) <= len(heard):
                return []
            self._heard[msg.turn] = msg.text
            delta = {"type": "conversation.item.input_audio_transcription.delta", "item_id": item.id}
            return [Event({**delta, "content_index": 0, "delta": msg.text[len(heard) :]})]
        self._heard.pop(msg.turn, None)
        done: dict[str, Any] = {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item.id,
            "content_index": 0,
            "transcript": msg.text,
        }
        if not self.vocab.beta:
            done["usage"] = {"type": "duration", "seconds": round(max(item.audio_ms, 0.0) / 1000, 3)}
        return [Event(done)]

    def _reply(self, msg: m.Reply) -> list[Event]:
        if not msg.text:
            return []
        response, out = self._output(msg.turn)
        if response is None:
            return out
        response.parts.append(msg.text)
        name = self.vocab.transcript_delta if response.speak else self.vocab.text_delta
        return [*out, Event({"type": name, **self._where(response), "delta": msg.text})]

    def _audio(self, msg: m.AudioOut) -> list[Event]:
        response, out = self._output(msg.turn)
        if response is None or not response.speak:
            return out
        response.audio_ms += len(msg.data) / 48.0
        data = msg.data
        fmt = self.config().output_format
        if fmt != "pcm":
            if self._downsampler is None:
                self._downsampler = g711.Downsampler()
            data = g711.encode(self._downsampler.process(data), fmt)
        delta = base64.b64encode(data).decode("ascii")
        return [*out, Event({"type": self.vocab.audio_delta, **self._where(response), "delta": delta})]

    def _turn_end(self, msg: m.TurnEnd) -> list[Event]:
        self.user_items.pop(msg.turn, None)
        response = self.responses.get(msg.turn)
        if response is None:
            return []
        return self.finish(response, "failed" if response.error else "completed")

    def _interrupted(self, msg: m.Interrupted) -> list[Event]:
        self.user_items.pop(msg.turn, None)
        response = self.responses.get(msg.turn)
        if response is None:
            return []
        reason = "client_cancelled" if self.cancelling else "turn_detected"
        self.cancelling = False
        return self.finish(response, "cancelled", reason=reason)

    def _error(self, msg: m.Error) -> list[Event]:
        kind = "server_error" if msg.code in SERVER_CODES or msg.code.startswith("upstream_") else None
        response = self.responses.get(msg.turn) if msg.turn is not None else None
        if response is not None:
            response.error = (msg.code, msg.message)
            kind = "server_error"
        return [error_event(msg.message, code=msg.code, kind=kind or "invalid_request_error")]

    def _ack(self, msg: m.Ack) -> list[Event]:
        pending = self.pending.pop(msg.ref, None)
        if pending is None:
            return []
        if msg.code is not None:
            if pending.item is not None:
                self.forget(pending.item)
            return [error_event(msg.message or msg.code, code=msg.code, event_id=pending.event_id)]
        if msg.turn is None:
            return []
        if pending.item is not None:
            item = self.items.get(pending.item)
            if item is not None:
                item.ref = m.ItemRef(turn=msg.turn, role="user")
                self.user_items[msg.turn] = item
            return []
        return self.start_response(msg.turn, pending.speak, pending.response)

    # ------------------------------------------------------------ responses

    def start_response(self, turn: int, speak: bool | None = None, response_id: str | None = None) -> list[Event]:
        if turn in self.responses or turn in self._finished:
            return []
        config = self.config()
        speaks = config.speak if speak is None else speak
        response = self.responses[turn] = Response(response_id or self.ids.new("resp"), turn, speaks)
        created = Event({"type": "response.created", "response": self._response_object(response, "in_progress")})
        return [created, Event({"type": "rate_limits.updated", "rate_limits": self.rate_limits()})]

    def _output(self, turn: int) -> tuple[Response | None, list[Event]]:
        """The turn's response with its output item and part started (all of it started here if need be)."""
        out: list[Event] = []
        response = self.responses.get(turn)
        if response is None and turn in self._finished:
            return None, []  # after its response.done: never (the outbox's gate already sees to it)
        if response is None:  # output of a turn not announced as answered (a race with a settings change)
            out += self.start_response(turn)
            response = self.responses[turn]
        if response.item is None:
            item = Item(self.ids.new("item"), "assistant", m.ItemRef(turn=turn, role="assistant"), audio=response.speak)
            item.response = response.id
            response.item = item
            previous = self.add_item(item)
            empty = assistant_item(self.vocab, item.id, speak=response.speak, text=None, status="in_progress")
            added = {"type": "response.output_item.added", "response_id": response.id, "output_index": 0}
            out.append(Event({**added, "item": empty}))
            out.append(Event({"type": self.vocab.item_added, "previous_item_id": previous, "item": empty}))
            part = assistant_part(self.vocab, speak=response.speak, text="")
            out.append(Event({"type": "response.content_part.added", **self._where(response), "part": part}))
        return response, out

    def finish(self, response: Response, status: str, *, reason: str | None = None) -> list[Event]:
        """The .done events of a response, then ``response.done``; the response is over."""
        self.responses.pop(response.turn, None)
        self._finished.append(response.turn)
        out: list[Event] = []
        output = []
        if response.item is not None:
            response.item.response = None
            text = "".join(response.parts)
            where = self._where(response)
            if response.speak:
                out.append(Event({"type": self.vocab.audio_done, **where}))
                out.append(Event({"type": self.vocab.transcript_done, **where, "transcript": text}))
            else:
                out.append(Event({"type": self.vocab.text_done, **where, "text": text}))
            part = assistant_part(self.vocab, speak=response.speak, text=text)
            out.append(Event({"type": "response.content_part.done", **where, "part": part}))
            item_status = "completed" if status == "completed" else "incomplete"
            item = assistant_item(self.vocab, response.item.id, speak=response.speak, text=text, status=item_status)
            done = {"type": "response.output_item.done", "response_id": response.id, "output_index": 0}
            out.append(Event({**done, "item": item}))
            if self.vocab.item_done:
                previous = self._previous(response.item.id)
                out.append(Event({"type": self.vocab.item_done, "previous_item_id": previous, "item": item}))
            output.append(item)
        body = self._response_object(response, status, output=output)
        body["status_details"] = _status_details(status, reason, response.error)
        body["usage"] = usage(text_deltas=len(response.parts), audio_ms=response.audio_ms)
        out.append(Event({"type": "response.done", "response": body}))
        return out

    def _where(self, response: Response) -> dict[str, Any]:
        assert response.item is not None
        return {"response_id": response.id, "item_id": response.item.id, "output_index": 0, "content_index": 0}

    def _response_object(self, response: Response, status: str, output: list[Any] | None = None) -> dict[str, Any]:
        config = self.config()
        body: dict[str, Any] = {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": None,
            "output": output or [],
            "conversation_id": self.conversation_id,
            **self.vocab.modalities(response.speak),
            "max_output_tokens": config.max_output_tokens,
            "usage": None,
            "metadata": None,
        }
        fmt = self.vocab.format_object(config.output_format)
        if self.vocab.beta:
            body.update(voice=config.voice, output_audio_format=fmt, temperature=config.temperature)
        else:
            body["audio"] = {"output": {"format": fmt, "voice": config.voice}}
        return body


def _status_details(status: str, reason: str | None, error: tuple[str, str] | None) -> dict[str, Any] | None:
    if status == "cancelled":
        return {"type": "cancelled", "reason": reason}
    if status == "failed":
        code, message = error or ("stage_failed", "the answer failed")
        return {"type": "failed", "error": {"type": "server_error", "code": code, "message": message}}
    return None


def message_events(translator: Translator, item: Item, previous: str | None, text: str) -> list[Event]:
    """The events of a text message the client added."""
    return translator.item_events(item, previous, message_item(translator.vocab, item.id, item.role, text))


_HANDLERS: dict[type[Any], Callable[[Translator, Any], list[Event]]] = {
    m.Vad: Translator._vad,
    m.Transcript: Translator._transcript,
    m.Reply: Translator._reply,
    m.AudioOut: Translator._audio,
    m.TurnEnd: Translator._turn_end,
    m.Interrupted: Translator._interrupted,
    m.Error: Translator._error,
    m.Ack: Translator._ack,
}

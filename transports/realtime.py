"""The sans-I/O protocol of one OpenAI Realtime connection (``GET /v1/realtime``), over the same session as ``/ws``.

A second ``ConnectionProtocol`` (``transports/connection.py`` is the first): ``transports/websocket.py``
runs it unchanged. The client never sends a ``hello``: ``start`` makes one (24 kHz PCM16 both ways, every
stage subscribed) and ``accept`` queues ``session.created``. ``receive`` turns client events into the
session's messages (``audio``, ``commit``, ``interrupt`` and the session-level requests of
``transports/messages.py``); the dialect's own answers (``session.updated``, ``conversation.item.added``,
its errors...) go back as ``Relay`` through the session's one writer, so they keep their order with
everything else. ``encode`` turns the session's messages into events (``transports/realtime_out.py``).
Audio is converted here: base64, and G.711 at 8 kHz <-> PCM16 at 24 kHz (``transports/g711.py``).

Limits as for ``/ws`` (``transports/limits.py``): message rate and audio budget (fatal: close 1008), idle
time and session length. An event is read up to ``realtime.max_event_bytes`` (OpenAI allows 15 MiB), but
one append may carry at most ``max_append_s`` of audio: a bigger one gets an error and is dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.frames import CloseCode

from transports import g711, wire
from transports import messages as m
from transports.connection import ENCODE_FAILURES_TOTAL, Close, Phase
from transports.limits import LimitOptions, SessionLimiter, slow_reader_error
from transports.realtime_config import ConfigError, RealtimeConfig, apply_update, response_speak, session_object
from transports.realtime_out import Ids, Item, Pending, Translator, message_events
from transports.realtime_vocab import (
    CLIENT_EVENTS,
    FORMAT_BYTES_PER_SAMPLE,
    FORMAT_RATE_HZ,
    UNSUPPORTED_EVENTS,
    Event,
    Vocab,
    error_event,
)
from vocab.errors import ProtocolError
from vocab.metrics import ERRORS_TOTAL
from vocab.options import require

log = logging.getLogger("voxpipe.realtime")
SESSION_RATE_HZ = 24000  # the session runs at 24 kHz PCM16 both ways, whatever the client's format
MIN_COMMIT_MS = 100.0  # as the API: a commit needs this much audio since the last one


@dataclass(frozen=True, slots=True)
class RealtimeOptions:
    """Config section ``realtime``: the OpenAI Realtime endpoint."""

    enabled: bool = True
    path: str = "/v1/realtime"
    max_event_bytes: int = 16 << 20  # one event (frame); the API allows 15 MiB of audio per append
    max_append_s: float = 20.0  # audio in one append; more gets an error (the session goes on)

    def validate(self) -> None:
        require(self.path.startswith("/"), "path", "must start with '/'")
        require(self.max_event_bytes >= 1024, "max_event_bytes", "must be at least 1024")
        require(self.max_append_s > 0, "max_append_s", "must be > 0")


def _relay(event: Event) -> m.Relay:
    return m.Relay(event)


class RealtimeConnection:
    """The Realtime dialect's connection rules for one client. Not thread-safe; one per socket."""

    def __init__(
        self,
        *,
        vocab: Vocab,
        config: RealtimeConfig,
        limits: LimitOptions,
        options: RealtimeOptions,
        now: float,
    ) -> None:
        self.vocab = vocab
        self.config = config
        self.limits = limits
        self.options = options
        self.phase: Phase = "hello"
        self.close: Close | None = None
        self.limiter: SessionLimiter | None = None
        self.session_id = ""
        self.ids = Ids()
        self.translator = Translator(vocab, lambda: self.config, self.ids)
        self.translator.rate_limits = self._rate_limits
        self.uncommitted_ms = 0.0  # input audio since the last commit / clear / end of an utterance
        self._upsampler: g711.Upsampler | None = None
        self._events = 0
        self._out: list[wire.Frame] = []
        self._expires_at: float | None = None  # the session's credential ends then (``expire_at``), till the limiter

    # ------------------------------------------------------------ lifecycle

    def start(self, now: float) -> list[Any]:
        """The hello the client never sends: 24 kHz PCM16 in and out, every stage's output."""
        fmt = m.AudioFormat(rate=SESSION_RATE_HZ)
        return [m.Hello(protocol=m.PROTOCOL_VERSION, audio_in=fmt, audio_out=fmt, subscribe="all")]

    def accept(
        self,
        opening: list[Any],
        *,
        in_rate_hz: int,
        busy: Callable[[], bool],
        now: float,
        stamp: Callable[[Any], Any] = lambda message: message,
    ) -> None:
        """The session is open: ``session.created`` goes out first, and the limits start counting."""
        self.phase = "open"
        max_append_bytes = int(self.options.max_append_s * in_rate_hz * 2)
        self.limiter = SessionLimiter(
            self.limits,
            in_rate_hz=in_rate_hz,
            max_frame_bytes=max_append_bytes,
            now=now,
            busy=busy,
            expires_at=self._expires_at,
        )
        messages = [x.message if type(x) is m.Sequenced else x for x in opening]
        ready = next((x for x in messages if type(x) is m.Ready), None)
        self.session_id = f"sess_{ready.session if ready is not None else self.ids.tag}"
        self._out += self._dump(self._session_event("session.created"))
        for message in messages:
            if type(message) is not m.Ready:
                self._out += self.encode(message)

    def refuse(self, err: ProtocolError) -> None:
        """No session (unauthorized, server full...): the error in the API's shape, then the close."""
        self._fail(err)

    def expire_at(self, when: float | None) -> None:
        """The session's credential (a JWT's ``exp``) ends at ``when`` (monotonic), as on ``/ws``."""
        self._expires_at = when
        if self.limiter is not None:
            self.limiter.expires_at = when

    def deadline(self) -> float | None:
        if self.close is not None or self.limiter is None:
            return None
        return self.limiter.deadline()

    def timeout(self, now: float) -> None:
        if self.close is None and self.limiter is not None:
            expired = self.limiter.expired(now)
            if expired is not None:
                self._fail(expired)

    def stalled(self, grace_s: float) -> None:
        err = slow_reader_error(grace_s)
        self._out.clear()
        self._closing(Close(err.close_code or CloseCode.POLICY_VIOLATION, err.message))

    def data_to_send(self) -> list[wire.Frame]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------ output

    def encode(self, message: Any) -> list[wire.Frame]:
        """A session message (``Sequenced`` or not) as the events it means; our own relayed events as they are."""
        if type(message) is m.Sequenced:
            message = message.message
        if type(message) is Event:
            return self._dump(message)
        if type(message) is m.Vad and message.event == "speech_end":
            self.uncommitted_ms = 0.0  # the utterance was committed (by silence or by the client)
        frames: list[wire.Frame] = []
        for event in self.translator.events(message):
            frames += self._dump(event)
        return frames

    def _dump(self, event: Event) -> list[wire.Frame]:
        self._events += 1
        data = {"event_id": f"event_{self.ids.tag}{self._events:06d}", **event.data}
        try:
            return [json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)]
        except (ValueError, TypeError) as exc:  # never the client's fault
            ENCODE_FAILURES_TOTAL.inc()
            log.error("cannot encode %s: %r", data.get("type"), exc)
            return []

    def _session_event(self, kind: str) -> Event:
        return Event({"type": kind, "session": session_object(self.vocab, self.config, self.session_id)})

    def _rate_limits(self) -> list[dict[str, Any]]:
        bucket = self.limiter.messages if self.limiter is not None else None
        if bucket is None:
            return []
        reset_s = (bucket.capacity - bucket.level) / bucket.rate
        return [
            {
                "name": "requests",
                "limit": int(bucket.capacity),
                "remaining": int(bucket.level),
                "reset_seconds": round(reset_s, 3),
            }
        ]

    # ------------------------------------------------------------ input

    def receive(self, frame: wire.Frame, now: float) -> list[Any]:
        """One client event in: messages for the session (relayed answers and errors among them)."""
        if self.close is not None or self.limiter is None:
            return []
        err = self.limiter.on_frame(now)
        if err is not None:
            self._fail(err)
            return []
        if isinstance(frame, bytes):
            return self._reject("Binary frames are not supported: send each event as JSON text.", "invalid_event")
        try:
            event = wire.parse_frame(frame)  # JSON, with the /ws checks (depth, lone surrogates)
        except ProtocolError as exc:
            if exc.code == "bad_frame":
                return self._reject(f"The server failed to parse the event: {exc.message}", "invalid_json")
            return self._reject("The 'type' field is missing.", "invalid_event", param="type")
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        kind = event["type"]
        handler = _INPUT.get(kind)
        if handler is None:
            if kind in UNSUPPORTED_EVENTS:
                message = f"'{kind}' is not supported by this server."
                return self._reject(message, "unsupported_event", param="type", event_id=event_id)
            message = f"Invalid value: '{kind[:60]}'. Supported values are: {', '.join(CLIENT_EVENTS)}."
            return self._reject(message, "invalid_value", param="type", event_id=event_id)
        try:
            out = handler(self, event, event_id)
        except ConfigError as exc:
            return self._reject(str(exc), exc.code, param=exc.param, event_id=event_id)
        for msg in out:  # audio counts against the budget, whichever event carried it
            pcm = msg.data if isinstance(msg, m.Audio) else msg.pcm if isinstance(msg, m.AddAudio) else None
            if pcm is not None:
                err = self.limiter.on_message(m.Audio(pcm), now)
                if err is not None:
                    self._fail(err)
                    return []
        return out

    def _reject(self, message: str, code: str, *, param: str | None = None, event_id: str | None = None) -> list[Any]:
        ERRORS_TOTAL.inc(code=code)
        return [_relay(error_event(message, code=code, param=param, event_id=event_id))]

    def _audio(self, value: Any, param: str, *, stream: bool = True) -> bytes:
        """Base64 audio in the session's input format -> PCM16 at 24 kHz (raises ``ConfigError``). ``stream``:
        the input buffer's audio (one converter state across appends), else a piece of its own (an item)."""
        if not isinstance(value, str):
            raise ConfigError(param, f"Invalid type for '{param}': expected base64-encoded audio", "invalid_type")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(param, f"Invalid '{param}': not valid base64", "invalid_value") from None
        fmt = self.config.input_format
        if fmt == "pcm":
            if len(data) % 2:
                message = f"Invalid '{param}': audio/pcm is 16-bit samples, {len(data)} bytes is not a whole number"
                raise ConfigError(param, message, "invalid_value")
            return data
        if not stream:
            return g711.Upsampler().process(g711.decode(data, fmt))
        if self._upsampler is None:
            self._upsampler = g711.Upsampler()
        return self._upsampler.process(g711.decode(data, fmt))

    # ------------------------------------------------------------ client events

    def _session_update(self, event: dict[str, Any], event_id: str | None) -> list[Any]:
        update = apply_update(self.vocab, event.get("session"), self.config, max_text_chars=self.limits.max_text_chars)
        old, self.config = self.config, update.config
        if old.input_format != self.config.input_format:
            self._upsampler = None
        if old.output_format != self.config.output_format:
            self.translator.output_format_changed()
        out: list[Any] = [update.configure, _relay(self._session_event("session.updated"))]
        if update.ignored_tools:
            message = "Tools are not supported by this server: the session goes on without them."
            out += self._reject(message, "unsupported_tools", param="session.tools", event_id=event_id)
        return out

    def _append(self, event: dict[str, Any], event_id: str | None) -> list[Any]:
        raw = event.get("audio")
        if raw is None:
            raise ConfigError("audio", "Missing required parameter: 'audio'.", "missing_required_parameter")
        if isinstance(raw, str) and len(raw) * 3 // 4 > self._max_append_input_bytes():
            limit_s = self.options.max_append_s
            message = f"Invalid 'audio': over {limit_s:g} s of audio in one append; send it in smaller pieces."
            raise ConfigError("audio", message, "input_audio_buffer_append_too_large")
        pcm = self._audio(raw, "audio")
        if not pcm:
            return []
        self.uncommitted_ms += len(pcm) / (SESSION_RATE_HZ * 2) * 1000
        return [m.Audio(pcm)]

    def _max_append_input_bytes(self) -> int:
        fmt = self.config.input_format
        return int(self.options.max_append_s * FORMAT_RATE_HZ[fmt] * FORMAT_BYTES_PER_SAMPLE[fmt]) + 4

    def _commit(self, event: dict[str, Any], event_id: str | None) -> list[Any]:
        if self.uncommitted_ms < MIN_COMMIT_MS:
            message = (
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {self.uncommitted_ms:.2f}ms of audio."
            )
            return self._reject(message, "input_audio_buffer_commit_empty", event_id=event_id)
        self.uncommitted_ms = 0.0
        return [m.Commit()]

    def _clear(self, event: dict[str, Any], event_id: str | None) -> list[Any]:
        self.uncommitted_ms = 0.0
        self.translator.forget_uncommitted()
        return [m.ClearInput(), _relay(Event({"type": "input_audio_buffer.cleared"}))]

    def _item_create(self, event: dict[str, Any], event_id: str | None) -> list[Any]:
        tr = self.translator
        item = event.get("item")
        if not isinstance(item, dict):
            raise ConfigError("item", "Missing required parameter: 'item'.", "missing_required_parameter")
        if item.get("type", "message") != "message":
            raise ConfigError("item.type", f"Items of type '{item.get('type')}' are not supported (no tools here).")
        role = item.get("role")
        if role not in ("user", "assistant", "system"):
            raise ConfigError("item.role", "Invalid value for 'item.role': user, assistant or system.")
        item_id = item.get("id") or self.ids.new("item")
        if not isinstance(item_id, str) or len(item_id) > 64 or item_id in tr.items:
            raise ConfigError("item.id", f"Invalid 'item.id': {str(item_id)[:64]!r} is taken or not a string.")
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in tr.items:
            raise ConfigError("previous_item_id", f"Item with id '{str(previous)[:64]}' not found.")
        content = item.get("content")
        if not isinstance(content, list) or not content:
            raise ConfigError("item.content", "Missing required parameter: 'item.content'.")
        texts, audio = [], []
        for i, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "text", "output_text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "input_audio" and role == "user":
                audio.append(self._audio(part.get("audio"), f"item.content[{i}].audio", stream=False))
            else:
                raise ConfigError(f"item.content[{i}].type", f"Content of type '{kind}' is not supported here.")
        if texts and audio:
            raise ConfigError("item.content", "A message with both text and audio is not supported here.")
        if audio:
            pcm = b"".join(audio)
            entry = Item(item_id, "user", m.ItemRef(item=item_id), audio=True, audio_ms=len(pcm) / 48.0)
            tr.pending[item_id] = Pending(event_id, item=item_id)
            prev = tr.add_item(entry)  # transcribed into the history after what is there
            content_map = {"type": "input_audio", "transcript": None}
            events = tr.item_events(entry, prev, {**_user_message(item_id), "content": [content_map]})
            return [m.AddAudio(ref=item_id, pcm=pcm), *map(_relay, events)]
        text = "".join(texts)
        limit = self.limits.max_text_chars
        if limit is not None and len(text) > limit:
            raise ConfigError(
                "item.content", f"Invalid 'item.content': over {limit} characters.", "string_above_max_length"
            )
        after = None if previous in (None, "root") else tr.items[previous].ref
        entry = Item(item_id, role, m.ItemRef(item=item_id))
        prev = tr.add_item(entry, after=previous, first=previous == "root")
        request = m.AddMessage(item=item_id, role=role, text=text, after=after, first=previous == "root")
        return [request, *map(_relay, message_events(tr, entry, prev, text))]

    def _known_item(self, event: dict[str, Any]) -> Item:
        item_id = event.get("item_id")
        item = self.translator.items.get(item_id) if isinstance(item_id, str) else None
        if item is None:
            raise ConfigError("item_id", f"Item with id '{str(item_id)[:64]}' not found.", "item_not_found")
        return item

    def _item_truncate(self, event: dict[str, Any], event_id: str | None) -> list[Any]:
        item = self._known_item(event)
        if item.role != "assistant" or not item.audio or item.ref.turn is None:
            raise ConfigError("item_id", "Only assistant messages with audio can be truncated.")
        if event.get("content_index", 0) != 0:
            raise ConfigError("content_index", "Invalid 'content_index': an answer has one content part (0).")
        end_ms = event.get("audio_end_ms")
        if isinstance(end_ms, bool) or not isinstance(end_ms, int) or end_ms < 0:
            raise ConfigError("audio_end_ms", "Invalid 'audio_end_ms': expected an integer >= 0.", "invalid_type")
        if item.response is not None:
            self.translator.cancelling = True  # the cut of a running answer is the client's
        truncated = {"type": "conversation.item.truncated", "item_id": item.id, "content_index": 0}
        return [
            m.TruncateReply(turn=item.ref.turn, audio_ms=float(end_ms)),
            _relay(Event({**truncated, "audio_end_ms": end_ms})),
        ]

    def _item_delete(self, event: dict[str, Any], event_id: str | None) -> list[Any]:
        item = self._known_item(event)
        if item.response is not None:
            raise ConfigError("item_id", "The item's response is in progress: cancel it first.")
        self.translator.forget(item.id)
        return [m.DeleteItem(item.ref), _relay(Event({"type": "conversation.item.deleted", "item_id": item.id}))]

    def _response_create(self, event: dict[str, Any], event_id: str | None) -> list[Any]:
        response = event.get("response") or {}
        if not isinstance(response, dict):
            raise ConfigError("response", "Invalid type for 'response': expected an object.", "invalid_type")
        if response.get("conversation") not in (None, "auto") or response.get("input") is not None:
            raise ConfigError("response.conversation", "Out-of-band responses are not supported here.")
        active = self.translator.active()
        running = active.id if active is not None else self.translator.pending_response()
        if running is not None:
            message = (
                f"Conversation already has an active response in progress: {running}. "
                "Wait until the response is finished before creating a new one."
            )
            return self._reject(message, "conversation_already_has_active_response", event_id=event_id)
        instructions = response.get("instructions")
        if instructions is not None:
            limit = self.limits.max_text_chars
            if not isinstance(instructions, str) or (limit is not None and len(instructions) > limit):
                raise ConfigError("response.instructions", "Invalid 'response.instructions': a string, not too long.")
        speak = response_speak(self.vocab, response)
        ref = self.ids.new("req")
        self.translator.pending[ref] = Pending(event_id, speak=speak, response=self.ids.new("resp"))
        return [m.CreateResponse(ref=ref, instructions=instructions, speak=speak)]

    def _response_cancel(self, event: dict[str, Any], event_id: str | None) -> list[Any]:
        active = self.translator.active()
        wanted = event.get("response_id")
        running = active.id if active is not None else self.translator.pending_response()
        if running is None or (wanted is not None and wanted != running):
            return self._reject(
                "Cancellation failed: no active response found", "response_cancel_not_active", event_id=event_id
            )
        self.translator.cancelling = True
        return [m.Interrupt()]

    def _output_clear(self, event: dict[str, Any], event_id: str | None) -> list[Any]:
        active = self.translator.active()
        out: list[Any] = []
        if active is not None:
            self.translator.cancelling = True
            out.append(m.Interrupt())
        response_id = active.id if active is not None else None
        return [*out, _relay(Event({"type": "output_audio_buffer.cleared", "response_id": response_id}))]

    # ------------------------------------------------------------ internals

    def _fail(self, err: ProtocolError) -> None:
        if self.close is not None:
            return
        ERRORS_TOTAL.inc(code=err.code)
        self._out += self._dump(error_event(err.message, code=err.code))
        self._closing(Close(err.close_code or CloseCode.POLICY_VIOLATION, err.message))

    def _closing(self, close: Close) -> None:
        if self.close is None:
            self.close = close
            self.phase = "closing"


def _user_message(item_id: str) -> dict[str, Any]:
    return {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user"}


_INPUT: dict[str, Callable[[RealtimeConnection, dict[str, Any], str | None], list[Any]]] = {
    "session.update": RealtimeConnection._session_update,
    "input_audio_buffer.append": RealtimeConnection._append,
    "input_audio_buffer.commit": RealtimeConnection._commit,
    "input_audio_buffer.clear": RealtimeConnection._clear,
    "conversation.item.create": RealtimeConnection._item_create,
    "conversation.item.truncate": RealtimeConnection._item_truncate,
    "conversation.item.delete": RealtimeConnection._item_delete,
    "response.create": RealtimeConnection._response_create,
    "response.cancel": RealtimeConnection._response_cancel,
    "output_audio_buffer.clear": RealtimeConnection._output_clear,
}

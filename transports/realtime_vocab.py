"""The OpenAI Realtime event vocabulary, GA and beta: event names, item and response shapes, errors.

The GA API (``/v1/realtime``) and the beta one (``OpenAI-Beta: realtime=v1``, or the
``openai-beta.realtime-v1`` subprotocol) share the flow and differ in names and shapes:

| what | GA | beta |
|---|---|---|
| audio out | ``response.output_audio.delta``/``.done`` | ``response.audio.delta``/``.done`` |
| its transcript | ``response.output_audio_transcript.*`` | ``response.audio_transcript.*`` |
| text out | ``response.output_text.*`` | ``response.text.*`` |
| an item joins | ``conversation.item.added`` then ``.done`` | ``conversation.item.created`` |
| assistant content | ``output_audio`` / ``output_text`` | ``audio`` / ``text`` |
| session config | nested ``audio.input``/``audio.output`` | flat ``input_audio_format``, ``voice`` ... |

Shapes follow the official ``openai`` SDK's types (``openai/types/realtime``, ``openai/types/beta/realtime``).
Pure data: nothing here keeps state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Format = Literal["pcm", "pcmu", "pcma"]  # PCM16 at 24 kHz, G.711 mu-law or A-law at 8 kHz
FORMAT_RATE_HZ: dict[str, int] = {"pcm": 24000, "pcmu": 8000, "pcma": 8000}
FORMAT_BYTES_PER_SAMPLE: dict[str, int] = {"pcm": 2, "pcmu": 1, "pcma": 1}
GA_FORMATS: dict[str, Format] = {"audio/pcm": "pcm", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}
BETA_FORMATS: dict[str, Format] = {"pcm16": "pcm", "g711_ulaw": "pcmu", "g711_alaw": "pcma"}
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


@dataclass(frozen=True, slots=True)
class Event:
    """One server event as a map, without its ``event_id`` (given as it is encoded)."""

    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Vocab:
    """The names and shapes of one dialect."""

    beta: bool
    audio_delta: str
    audio_done: str
    transcript_delta: str
    transcript_done: str
    text_delta: str
    text_done: str
    item_added: str
    item_done: str | None  # GA only
    audio_content: str  # an assistant message's audio part
    text_content: str  # an assistant message's text part

    def format_object(self, fmt: Format) -> Any:
        if self.beta:
            return next(name for name, f in BETA_FORMATS.items() if f == fmt)
        name = next(name for name, f in GA_FORMATS.items() if f == fmt)
        return {"type": name, "rate": 24000} if fmt == "pcm" else {"type": name}

    def modalities(self, speak: bool) -> dict[str, Any]:
        if self.beta:
            return {"modalities": ["text", "audio"] if speak else ["text"]}
        return {"output_modalities": ["audio"] if speak else ["text"]}


GA = Vocab(
    beta=False,
    audio_delta="response.output_audio.delta",
    audio_done="response.output_audio.done",
    transcript_delta="response.output_audio_transcript.delta",
    transcript_done="response.output_audio_transcript.done",
    text_delta="response.output_text.delta",
    text_done="response.output_text.done",
    item_added="conversation.item.added",
    item_done="conversation.item.done",
    audio_content="output_audio",
    text_content="output_text",
)
BETA = Vocab(
    beta=True,
    audio_delta="response.audio.delta",
    audio_done="response.audio.done",
    transcript_delta="response.audio_transcript.delta",
    transcript_done="response.audio_transcript.done",
    text_delta="response.text.delta",
    text_done="response.text.done",
    item_added="conversation.item.created",
    item_done=None,
    audio_content="audio",
    text_content="text",
)

# Client events this server answers; anything else gets ``invalid_value`` on ``type``.
CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)
# Known to the API, not served here: answered with an ``unsupported`` error, the session goes on.
UNSUPPORTED_EVENTS = ("conversation.item.retrieve", "transcription_session.update")


def error_event(
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    event_id: str | None = None,
    kind: str = "invalid_request_error",
) -> Event:
    """The API's ``error`` event: the client's mistake (``invalid_request_error``) or ours (``server_error``)."""
    error = {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id}
    return Event({"type": "error", "error": error})


def user_item(vocab: Vocab, item_id: str, *, text: str | None = None, audio: bool = False) -> dict[str, Any]:
    """A user message: typed text, or audio (its transcript comes later, in its own event)."""
    content: dict[str, Any] = (
        {"type": "input_audio", "transcript": None} if audio else {"type": "input_text", "text": text or ""}
    )
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [content],
    }


def message_item(vocab: Vocab, item_id: str, role: str, text: str) -> dict[str, Any]:
    """A text message the client added (user, system or assistant)."""
    if role == "user":
        return user_item(vocab, item_id, text=text)
    kind = "input_text" if role == "system" else vocab.text_content
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": role,
        "content": [{"type": kind, "text": text}],
    }


def assistant_part(vocab: Vocab, *, speak: bool, text: str) -> dict[str, Any]:
    """The content part of an answer: audio with its transcript, or text (the response's ``part``)."""
    if speak:
        return {"type": "audio", "transcript": text}
    return {"type": "text", "text": text}


def assistant_item(vocab: Vocab, item_id: str, *, speak: bool, text: str | None, status: str) -> dict[str, Any]:
    """The answer as an item; ``text`` None: no content yet (as the item is added)."""
    content = []
    if text is not None:
        kind = vocab.audio_content if speak else vocab.text_content
        content = [{"type": kind, "transcript": text} if speak else {"type": kind, "text": text}]
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def usage(*, text_deltas: int, audio_ms: float) -> dict[str, Any]:
    """Estimated token counts: one per streamed text delta, audio at 10 per second (no tokenizer here)."""
    audio_tokens = round(audio_ms / 100)
    return {
        "total_tokens": text_deltas + audio_tokens,
        "input_tokens": 0,
        "output_tokens": text_deltas + audio_tokens,
        "input_token_details": {"text_tokens": 0, "audio_tokens": 0, "cached_tokens": 0},
        "output_token_details": {"text_tokens": text_deltas, "audio_tokens": audio_tokens},
    }

"""Fake model services speaking the real wire protocols, with scripted faults.

- ``FakeOpenAi``: ``/v1/chat/completions`` (SSE, ``[DONE]``), ``/v1/audio/transcriptions`` (multipart WAV),
  ``/v1/audio/speech`` (streamed pcm 24 kHz or wav).
- ``FakeOllama``: ``/api/chat`` (NDJSON).
- ``FakeDify``: ``/v1/chat-messages`` (SSE events, conversations, ``event: ping``) and ``.../stop``.
- ``FakeGptSovits``: api_v2 ``/tts`` (streamed wav with a size-0 header, or raw).

``fail_next("http_503", "hang", ...)`` scripts the next requests' behavior; after the script, ``default``
applies. Behaviors: ``ok``, ``slow`` (drip, ``drip_s`` per piece), ``http_500``/``http_429``/``http_503``,
``hang`` (nothing until the client leaves), ``midway`` (half the stream, then the connection is cut),
``stall`` (half the stream, then silence), ``malformed`` (a broken first line), ``malformed_midway``
(a broken line after half the stream), ``error`` (the protocol's own error report mid-stream),
``refuse`` (connection closed without a response).
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import struct
import time
import uuid
import wave
from collections import deque
from typing import Any, Self

from tests.fakes.http import Exchange, FakeHttpServer, Request

BEHAVIORS = (
    "ok",
    "slow",
    "http_500",
    "http_429",
    "http_503",
    "hang",
    "midway",
    "stall",
    "malformed",
    "malformed_midway",
    "error",
    "refuse",
)


def tokens(text: str) -> list[str]:
    return [w if i == 0 else " " + w for i, w in enumerate(text.split())]


def tone_pcm(words: int, rate_hz: int, word_ms: float = 100.0) -> bytes:
    """Deterministic PCM16 for a reply of ``words`` words (a 300 Hz tone, ``word_ms`` per word)."""
    n = int(rate_hz * word_ms / 1000) * words
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 300 * i / rate_hz))) for i in range(n))


def wav_header(rate_hz: int, data_size: int) -> bytes:
    """A RIFF/WAVE PCM16 mono header; streaming servers put 0 or 0xFFFFFFFF as sizes."""
    riff = 0xFFFFFFFF if data_size == 0xFFFFFFFF else 36 + data_size
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, rate_hz, rate_hz * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )


class FakeService:
    def __init__(self, *, api_key: str | None = None) -> None:
        self.http = FakeHttpServer(self._handle)
        self.script: deque[str] = deque()
        self.default = "ok"
        self.api_key = api_key
        self.drip_s = 0.02
        self.behaviors: list[str] = []  # what each request got

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def requests(self) -> list[Request]:
        return self.http.requests

    @property
    def exchanges(self) -> list[Exchange]:
        return self.http.exchanges

    def disconnects(self) -> int:
        """Requests whose client went away before the response was complete."""
        return sum(1 for ex in self.exchanges if ex.disconnected.is_set() and not ex.finished and not ex.aborted)

    async def wait_disconnect(self, index: int = -1, timeout_s: float = 3.0) -> float:
        """Seconds until request ``index``'s client disconnects (TimeoutError if it never does)."""
        started = time.monotonic()
        await asyncio.wait_for(self.exchanges[index].disconnected.wait(), timeout_s)
        return time.monotonic() - started

    def fail_next(self, *behaviors: str) -> None:
        for b in behaviors:
            assert b in BEHAVIORS, b
        self.script.extend(behaviors)

    async def __aenter__(self) -> Self:
        await self.http.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.down()

    async def down(self) -> None:
        await self.http.down()

    async def up(self) -> None:
        await self.http.up()

    def _authorized(self, ex: Exchange) -> bool:
        return self.api_key is None or ex.request.headers.get("authorization") == f"Bearer {self.api_key}"

    async def _handle(self, ex: Exchange) -> None:
        behavior = self.script.popleft() if self.script else self.default
        self.behaviors.append(behavior)
        if behavior == "refuse":
            ex.abort()
            return
        if behavior == "hang":
            await ex.hang()
            return
        if behavior.startswith("http_"):
            await self.http_error(ex, int(behavior[5:]))
            return
        await self.route(ex, behavior)

    async def http_error(self, ex: Exchange, status: int) -> None:
        await ex.respond_json(
            status,
            {"error": {"message": f"fake failure {status}", "type": "server_error"}},
            {"Retry-After": "0"} if status in (429, 503) else None,
        )

    async def route(self, ex: Exchange, behavior: str) -> None:
        raise NotImplementedError

    async def stream_pieces(
        self, ex: Exchange, pieces: list[bytes], behavior: str, *, bad_piece: bytes, error_piece: bytes
    ) -> None:
        """The common fault shapes of a streamed body (headers already sent)."""
        half = max(1, len(pieces) // 2)
        if behavior == "malformed":
            half, behavior = 0, "malformed_midway"
        for i, piece in enumerate(pieces):
            if behavior in ("midway", "stall", "error", "malformed_midway") and i == half:
                if behavior == "midway":
                    ex.abort()
                    return
                if behavior == "stall":
                    await ex.hang()
                    return
                await ex.send(error_piece if behavior == "error" else bad_piece)
                if behavior == "error":
                    await ex.end()
                    return
            await ex.send(piece)
            if behavior == "slow":
                await asyncio.sleep(self.drip_s)
            elif self.drip_s and i % 4 == 3:
                await asyncio.sleep(0)  # let the client interleave
        await ex.end()


# ---------------------------------------------------------------------- OpenAI-compatible


class FakeOpenAi(FakeService):
    """Chat completions, transcriptions and speech, as OpenAI (and vLLM, llama.cpp server) answer them."""

    def __init__(self, *, api_key: str | None = None, reply: str | None = None) -> None:
        super().__init__(api_key=api_key)
        self.reply = reply  # default: "You said: <last user message>"
        self.speech_rate_hz = 24000
        self.transcript = "hello from the fake"

    async def http_error(self, ex: Exchange, status: int) -> None:
        kinds = {
            429: ("Rate limit reached", "rate_limit_exceeded"),
            500: ("The server had an error", None),
            503: ("The engine is currently overloaded", None),
        }
        message, code = kinds.get(status, ("error", None))
        await ex.respond_json(
            status,
            {"error": {"message": message, "type": "server_error", "param": None, "code": code}},
            {"Retry-After": "0"} if status == 429 else None,
        )

    async def route(self, ex: Exchange, behavior: str) -> None:
        if not self._authorized(ex):
            await ex.respond_json(
                401,
                {
                    "error": {
                        "message": "Incorrect API key provided",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
            )
            return
        path = ex.request.path
        if path == "/v1/chat/completions":
            await self.chat(ex, behavior)
        elif path == "/v1/audio/transcriptions":
            await self.transcription(ex, behavior)
        elif path == "/v1/audio/speech":
            await self.speech(ex, behavior)
        else:
            await ex.respond_json(404, {"error": {"message": f"Unknown request URL: POST {path}"}})

    def reply_for(self, body: dict[str, Any]) -> str:
        if self.reply is not None:
            return self.reply
        user = [m["content"] for m in body["messages"] if m["role"] == "user"]
        return f"You said: {user[-1] if user else ''}"

    async def chat(self, ex: Exchange, behavior: str) -> None:
        body = ex.request.json()
        if not body.get("model") or not isinstance(body.get("messages"), list):
            await ex.respond_json(400, {"error": {"message": "model and messages are required"}})
            return
        if body.get("stream") is not True:
            await ex.respond_json(400, {"error": {"message": "this fake only streams"}})
            return
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
            "system_fingerprint": "fp_fake",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            obj = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        pieces = [chunk({"role": "assistant", "content": ""})]
        pieces += [chunk({"content": t}) for t in tokens(self.reply_for(body))]
        pieces += [chunk({}, "stop"), b"data: [DONE]\n\n"]
        await ex.send_head(200, {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"})
        await self.stream_pieces(
            ex,
            pieces,
            behavior,
            bad_piece=b'data: {"choices": [{"delta": {"content": "oops\n\n',
            error_piece=b'data: {"error": {"message": "model crashed", "type": "server_error"}}\n\n',
        )

    async def transcription(self, ex: Exchange, behavior: str) -> None:
        fields, files = ex.request.form()
        if "file" not in files or "model" not in fields:
            await ex.respond_json(400, {"error": {"message": "file and model are required"}})
            return
        with wave.open(io.BytesIO(files["file"][1])) as wav:
            rate, frames, width, channels = wav.getframerate(), wav.getnframes(), wav.getsampwidth(), wav.getnchannels()
        if behavior == "malformed":
            await ex.respond(200, b'{"text": ', "application/json")
            return
        if behavior in ("midway", "stall"):
            await ex.send_head(200, {"Content-Type": "application/json"}, length=100)
            await ex.send(b'{"text": "hel')
            ex.abort() if behavior == "midway" else await ex.hang()
            return
        text = f"{self.transcript} ({round(frames * 1000 / rate)} ms at {rate} Hz, {width * 8} bit x{channels})"
        await ex.respond_json(200, {"text": text})

    async def speech(self, ex: Exchange, behavior: str) -> None:
        body = ex.request.json()
        if not body.get("input") or not body.get("voice") or not body.get("model"):
            await ex.respond_json(400, {"error": {"message": "model, input and voice are required"}})
            return
        fmt = body.get("response_format", "mp3")
        if fmt not in ("pcm", "wav"):
            await ex.respond_json(400, {"error": {"message": f"this fake speaks pcm and wav, not {fmt}"}})
            return
        if behavior == "malformed" and fmt == "wav":
            await ex.respond(200, b"ID3\x04not a wav file at all", "audio/wav")
            return
        pcm = tone_pcm(len(body["input"].split()), self.speech_rate_hz)
        step = 1001  # odd: pieces split samples, as the network does
        pieces = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        if fmt == "wav":
            pieces.insert(0, wav_header(self.speech_rate_hz, 0xFFFFFFFF))
        ctype = "audio/wav" if fmt == "wav" else "audio/pcm"
        await ex.send_head(200, {"Content-Type": ctype})
        await self.stream_pieces(ex, pieces, behavior, bad_piece=b"", error_piece=b"")


# ---------------------------------------------------------------------- Ollama


class FakeOllama(FakeService):
    def __init__(self, *, models: tuple[str, ...] = ("llama3.2",)) -> None:
        super().__init__()
        self.models = models

    async def http_error(self, ex: Exchange, status: int) -> None:
        await ex.respond_json(status, {"error": f"fake failure {status}"})

    async def route(self, ex: Exchange, behavior: str) -> None:
        if ex.request.path != "/api/chat":
            await ex.respond(404, b"404 page not found", "text/plain")
            return
        body = ex.request.json()
        if body.get("model") not in self.models:
            await ex.respond_json(404, {"error": f'model "{body.get("model")}" not found, try pulling it first'})
            return
        user = [m["content"] for m in body["messages"] if m["role"] == "user"]
        stamp = "2025-01-01T00:00:00.000000Z"

        def line(obj: dict[str, Any]) -> bytes:
            return json.dumps({"model": body["model"], "created_at": stamp, **obj}).encode() + b"\n"

        pieces = [
            line({"message": {"role": "assistant", "content": t}, "done": False})
            for t in tokens(f"You said: {user[-1] if user else ''}")
        ]
        pieces.append(
            line(
                {
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "stop",
                    "total_duration": 1234567,
                    "load_duration": 1000,
                    "prompt_eval_count": 10,
                    "eval_count": len(pieces),
                    "eval_duration": 100000,
                }
            )
        )
        await ex.send_head(200, {"Content-Type": "application/x-ndjson"})
        await self.stream_pieces(
            ex,
            pieces,
            behavior,
            bad_piece=b'{"model": "llama3.2", "message": {\n',
            error_piece=b'{"error":"an error was encountered while running the model"}\n',
        )


# ---------------------------------------------------------------------- Dify


class FakeDify(FakeService):
    """A Dify chat app: keeps conversations (per user), answers "You said: <query>. Message <n>."."""

    def __init__(self, *, api_key: str = "app-fake-key") -> None:
        super().__init__(api_key=api_key)
        self.conversations: dict[str, list[str]] = {}
        self.stopped: list[tuple[str, str]] = []  # (task_id, user)
        self.tasks: dict[str, asyncio.Event] = {}

    async def http_error(self, ex: Exchange, status: int) -> None:
        await ex.respond_json(
            status, {"code": "internal_server_error", "message": f"fake failure {status}", "status": status}
        )

    async def route(self, ex: Exchange, behavior: str) -> None:
        if not self._authorized(ex):
            await ex.respond_json(401, {"code": "unauthorized", "message": "Access token is invalid", "status": 401})
            return
        path = ex.request.path
        if path.startswith("/v1/chat-messages/") and path.endswith("/stop"):
            task_id = path.split("/")[3]
            self.stopped.append((task_id, ex.request.json().get("user", "")))
            if task_id in self.tasks:
                self.tasks[task_id].set()
            await ex.respond_json(200, {"result": "success"})
            return
        if path != "/v1/chat-messages":
            await ex.respond_json(
                404, {"code": "not_found", "message": "The requested URL was not found", "status": 404}
            )
            return
        await self.chat(ex, behavior)

    async def chat(self, ex: Exchange, behavior: str) -> None:
        body = ex.request.json()
        for key in ("query", "user", "inputs"):
            if key not in body:
                await ex.respond_json(400, {"code": "invalid_param", "message": f"{key} is required", "status": 400})
                return
        if body.get("response_mode") != "streaming":
            await ex.respond_json(400, {"code": "invalid_param", "message": "this fake only streams", "status": 400})
            return
        conversation = body.get("conversation_id") or ""
        if conversation and conversation not in self.conversations:
            await ex.respond_json(404, {"code": "not_found", "message": "Conversation Not Exists.", "status": 404})
            return
        conversation = conversation or str(uuid.uuid4())
        history = self.conversations.setdefault(conversation, [])
        history.append(body["query"])
        task_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.tasks[task_id] = asyncio.Event()
        ids = {"task_id": task_id, "message_id": message_id, "conversation_id": conversation}

        def event(obj: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        pieces = [b"event: ping\n\n", event({"event": "workflow_started", **ids, "data": {"id": "run-1"}})]
        for t in tokens(f"You said: {body['query']}. Message {len(history)}."):
            pieces.append(
                event({"event": "message", **ids, "id": message_id, "answer": t, "created_at": int(time.time())})
            )
        pieces.append(b"event: ping\n\n")
        pieces.append(
            event({"event": "message_end", **ids, "id": message_id, "metadata": {"usage": {"total_tokens": 42}}})
        )
        await ex.send_head(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await self.stream_pieces(
            ex,
            pieces,
            behavior,
            bad_piece=b'data: {"event": "message", "answer\n\n',
            error_piece=event(
                {
                    "event": "error",
                    **ids,
                    "status": 400,
                    "code": "completion_request_error",
                    "message": "model quota exceeded",
                }
            ),
        )


# ---------------------------------------------------------------------- GPT-SoVITS


class FakeGptSovits(FakeService):
    """api_v2's ``/tts``: the checks of its ``check_params``, a size-0 WAV header then raw pieces when streaming."""

    languages = ("auto", "en", "zh", "ja", "ko", "yue", "all_zh", "all_ja")

    def __init__(self, *, rate_hz: int = 32000) -> None:
        super().__init__()
        self.rate_hz = rate_hz

    async def http_error(self, ex: Exchange, status: int) -> None:
        await ex.respond_json(status, {"message": "tts failed", "Exception": f"fake failure {status}"})

    async def route(self, ex: Exchange, behavior: str) -> None:
        if ex.request.path != "/tts" or ex.request.method != "POST":
            await ex.respond_json(404, {"detail": "Not Found"})
            return
        req = ex.request.json()
        problem = None
        if not req.get("ref_audio_path"):
            problem = "ref_audio_path is required"
        elif not req.get("text"):
            problem = "text is required"
        elif str(req.get("text_lang", "")).lower() not in self.languages:
            problem = f"text_lang: {req.get('text_lang')} is not supported in version v2"
        elif str(req.get("prompt_lang", "")).lower() not in self.languages:
            problem = f"prompt_lang: {req.get('prompt_lang')} is not supported in version v2"
        elif req.get("media_type", "wav") not in ("wav", "raw", "ogg", "aac"):
            problem = f"media_type: {req.get('media_type')} is not supported"
        if problem:
            await ex.respond_json(400, {"message": problem})
            return
        media = req.get("media_type", "wav")
        streaming = req.get("streaming_mode", False) not in (False, 0)
        pcm = tone_pcm(len(req["text"].split()), self.rate_hz)
        if not streaming:
            body = pcm if media == "raw" else wav_header(self.rate_hz, len(pcm)) + pcm
            await ex.respond(200, body, f"audio/{media}")
            return
        step = int(self.rate_hz * 0.1) * 2  # one fragment per word
        pieces = [pcm[i : i + step] for i in range(0, len(pcm), step)]
        if media == "wav":
            pieces.insert(0, wav_header(self.rate_hz, 0))  # what wave_header_chunk() writes
        await ex.send_head(200, {"Content-Type": f"audio/{media}"})
        await self.stream_pieces(ex, pieces, behavior, bad_piece=b"", error_piece=b"")

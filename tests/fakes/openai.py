"""A fake OpenAI-compatible server: chat completions (SSE), transcriptions (multipart WAV), speech (pcm/wav)."""

from __future__ import annotations

import io
import json
import struct
import time
import wave
from typing import Any

from tests.fakes.base import FakeService, tokens, tone_pcm, wav_header
from tests.fakes.http import Exchange


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
            given = ex.request.headers.get("authorization", "").removeprefix("Bearer ")
            masked = given[:4] + "*" * max(0, len(given) - 8) + given[-4:] if len(given) > 8 else "***"
            await ex.respond_json(
                401,
                {
                    "error": {
                        # as OpenAI answers it: the key, partly masked, in the error body
                        "message": f"Incorrect API key provided: {masked}. You can find your API key at "
                        "https://platform.openai.com/account/api-keys.",
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
        if behavior == "endless_body":
            await ex.send_head(200, {"Content-Type": "application/json"})
            await self.endless(ex, b'{"text": "')
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
        if behavior == "wav_1hz" and fmt == "wav":
            pieces[0] = wav_header(1, 0xFFFFFFFF)
        if behavior == "wav_huge_chunk" and fmt == "wav":
            # RIFF, WAVE, then a LIST chunk that says it is 4 GiB long, then bytes that never end
            await ex.send_head(200, {"Content-Type": ctype})
            await self.endless(ex, b"RIFF\xff\xff\xff\xffWAVELIST" + struct.pack("<I", 0xFFFFFFF0))
            return
        await ex.send_head(200, {"Content-Type": ctype})
        await self.stream_pieces(ex, pieces, behavior, bad_piece=b"", error_piece=b"")

"""The base of the fake model services (``openai``, ``chat``, ``gpt_sovits``): scripted faults per request.

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
``refuse`` (connection closed without a response); and bodies that never end (a broken proxy's, or an attack
on the client's memory), each sent until the client leaves: ``endless_error_body`` (HTTP 503 and a body that
never ends), ``endless_line`` (HTTP 200 and a line that never ends: SSE, NDJSON), ``endless_body`` (HTTP 200 and
a JSON body that never ends: transcriptions), ``wav_huge_chunk`` (a WAV header with a 4 GiB chunk before its
data), ``wav_1hz`` (a WAV header that says 1 Hz), ``agent_thought_drop`` (Dify: a tool ran, then the
connection drops) and ``error_first`` (Dify: an ``error`` event before any answer).
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections import deque
from typing import Self

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
    "endless_error_body",
    "endless_line",
    "endless_body",
    "wav_huge_chunk",
    "wav_1hz",
    "agent_thought_drop",
    "error_first",
)
ENDLESS_PIECE = b"x" * 65536
ENDLESS_MAX_BYTES = 256 << 20  # "endless": far past any cap, and still a bound for a client that has none
ENDLESS_PAUSE_S = 0.004  # between pieces: about 16 MiB/s, fast enough to outrun a cap, slow enough for the box


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
        self._arrived = asyncio.Condition()

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

    async def wait_requests(self, count: int = 1, timeout_s: float = 3.0) -> None:
        """Until ``count`` requests have arrived (TimeoutError otherwise)."""
        async with asyncio.timeout(timeout_s), self._arrived:
            await self._arrived.wait_for(lambda: len(self.exchanges) >= count)

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
        async with self._arrived:
            self._arrived.notify_all()
        if behavior == "refuse":
            ex.abort()
            return
        if behavior == "hang":
            await ex.hang()
            return
        if behavior.startswith("http_"):
            await self.http_error(ex, int(behavior[5:]))
            return
        if behavior == "endless_error_body":
            await ex.send_head(503, {"Content-Type": "text/html", "Retry-After": "0"})
            await self.endless(ex, b"<html><body>")
            return
        await self.route(ex, behavior)

    async def endless(self, ex: Exchange, first: bytes = b"") -> None:
        """A body that does not end (headers already sent, chunked): ``first``, then pieces until the client leaves."""
        await ex.send(first)
        while ex.sent_bytes < ENDLESS_MAX_BYTES:
            await ex.send(ENDLESS_PIECE)  # ConnectionResetError once the client has gone
            await asyncio.sleep(ENDLESS_PAUSE_S)
        await ex.end()

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
        if behavior == "endless_line":
            await self.endless(ex)  # no line break, ever
            return
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

"""Test helpers for ``/v1/realtime``: the official ``openai`` SDK pointed at the real server, and event reading.

``sdk_connect(server, beta=...)`` opens ``AsyncOpenAI(...).realtime.connect`` (GA) or
``.beta.realtime.connect`` (beta); ``Events`` reads what the SDK parses, with a deadline on every wait.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from openai import AsyncOpenAI


def sdk_client(server: Any, api_key: str = "sk-test-not-checked") -> AsyncOpenAI:
    """The SDK with only its URLs changed: HTTP base (unused here) and the WebSocket base."""
    base = server.realtime_url.rsplit("/realtime", 1)[0]
    return AsyncOpenAI(api_key=api_key, base_url=server.http_url + "v1", websocket_base_url=base)


@contextlib.asynccontextmanager
async def sdk_connect(server: Any, *, beta: bool = False, api_key: str = "sk-test-not-checked") -> AsyncIterator[Any]:
    client = sdk_client(server, api_key)
    realtime = client.beta.realtime if beta else client.realtime
    async with realtime.connect(model="gpt-realtime") as conn:
        yield conn


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Events:
    """Every event one connection received, in order, with when it arrived."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.seen: list[Any] = []
        self.at: list[float] = []

    async def next(self, timeout: float = 10.0) -> Any:
        async with asyncio.timeout(timeout):  # asyncio.timeout: see tests/client.py on wait_for
            event = await self.conn.recv()
        self.seen.append(event)
        self.at.append(time.monotonic())
        return event

    async def until(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> list[Any]:
        """Events up to and including the first that matches."""
        deadline = time.monotonic() + timeout
        out = []
        while True:
            event = await self.next(max(0.01, deadline - time.monotonic()))
            out.append(event)
            if predicate(event):
                return out

    async def until_type(self, kind: str, timeout: float = 10.0) -> list[Any]:
        return await self.until(lambda e: e.type == kind, timeout)

    async def send_audio(self, pcm: bytes, *, chunk_bytes: int = 960) -> None:
        """Append ``pcm`` (in the session's input format) in pieces, 20 ms of 24 kHz PCM16 by default."""
        for i in range(0, len(pcm), chunk_bytes):
            await self.conn.input_audio_buffer.append(audio=b64(pcm[i : i + chunk_bytes]))


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


def audio_of(events: list[Any], response_id: str) -> bytes:
    return b"".join(
        base64.b64decode(e.delta)
        for e in events
        if e.type in ("response.output_audio.delta", "response.audio.delta") and e.response_id == response_id
    )

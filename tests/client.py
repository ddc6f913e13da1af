"""Test helpers: start the real server on a free port, and a small real-socket client for it.

``running_server(config)`` runs ``server.app.serve`` in the test's event loop (so tests can also
look at the server's tasks); ``Client`` speaks the wire contract over a real ``websockets`` socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from transports.wire import Framing, decode_server, encode_map

Message = dict[str, Any]

TEST_PIPELINE: list[dict[str, Any]] = [
    {"name": "vad", "engine": "energy", "start_ms": 60, "end_ms": 200},
    {"name": "asr", "engine": "duration_asr"},
    {"name": "llm", "engine": "echo", "delay_ms": 5},
    {"name": "tts", "engine": "tone", "word_ms": 100, "gap_ms": 0},
]


def test_config(**sections: Any) -> dict[str, Any]:
    """A config dict on the test stages, listening on a free port; ``sections`` override parts."""
    config: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "session": {"lead_ms": 200, "barge_in_min_ms": 100, "barge_in": "immediate"},  # words mode: its own tests
        "pipeline": copy.deepcopy(TEST_PIPELINE),
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


test_config.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@contextlib.asynccontextmanager
async def running_server(config: dict[str, Any] | None = None) -> AsyncIterator[Any]:
    """The real server on a free port; yields the running server (``.port``, ``.url``, ``.http_url``)."""
    from server.app import serve
    from server.config import parse_config

    async with serve(parse_config(config or test_config()), quiet=True) as running:
        yield running


def tone(ms: float, rate_hz: int = 16000, freq: float = 440.0, amplitude: float = 0.3) -> bytes:
    n = int(rate_hz * ms / 1000)
    t = np.arange(n) / rate_hz
    return (amplitude * 32767 * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()


def silence(ms: float, rate_hz: int = 16000) -> bytes:
    return b"\x00\x00" * int(rate_hz * ms / 1000)


def noise(ms: float, rate_hz: int = 16000, amplitude: float = 0.3, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    n = int(rate_hz * ms / 1000)
    return (rng.uniform(-amplitude, amplitude, n) * 32767).astype("<i2").tobytes()


class Client:
    """One conversation over a real WebSocket; ``framing`` picks msgpack (binary) or JSON (text)."""

    def __init__(self, ws: ClientConnection, framing: Framing) -> None:
        self.ws = ws
        self.framing = framing
        self.ready: Message = {}
        self.received: list[Message] = []
        # every server message carries session_seq, one more each time (a resume's replay aside)
        self.last_seq: int | None = None
        self.check_seq = True

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        url: str,
        *,
        framing: str = "msgpack",
        hello: Message | None = None,
        send_hello: bool = True,
        **connect_kwargs: Any,
    ) -> AsyncIterator[Client]:
        async with connect(url, max_size=None, **connect_kwargs) as ws:
            client = cls(ws, Framing(framing))
            if send_hello:
                await client.hello(**(hello or {}))
            yield client

    async def hello(self, **fields: Any) -> Message:
        msg = {
            "type": "hello",
            "protocol": 1,
            "audio_in": {"format": "pcm16", "rate": 16000, "channels": 1},
            "audio_out": {"format": "pcm16", "rate": 16000},
            **fields,
        }
        if "resume" in fields:
            self.check_seq = False  # ready comes first, then the replay with its older numbers
        await self.send(msg)
        self.ready = await self.recv_type("ready")
        return self.ready

    async def send(self, msg: Message) -> None:
        await self.ws.send(encode_map(msg, self.framing))

    async def send_raw(self, frame: bytes | str) -> None:
        await self.ws.send(frame)

    async def recv(self, timeout: float = 5.0) -> Message:
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that races an arriving frame,
        # and a reader task cancelled that way never ends (it hung a test on a busy machine)
        async with asyncio.timeout(timeout):
            frame = await self.ws.recv()
        msg = decode_server(frame)
        seq = msg.pop("session_seq", None)
        if seq is None:  # only the errors of a refused hello come before a session exists
            assert msg["type"] == "error", f"{msg.get('type')} without session_seq"
            assert self.last_seq is None, "an error without session_seq inside a session"
        else:
            assert isinstance(seq, int)
            if self.check_seq and self.last_seq is not None:
                assert seq == self.last_seq + 1, f"session_seq {seq} after {self.last_seq} ({msg.get('type')})"
            self.last_seq = seq if self.last_seq is None else max(seq, self.last_seq)
            msg["_seq"] = seq
        msg["_at"] = time.monotonic()
        self.received.append(msg)
        return msg

    async def recv_until(self, predicate: Callable[[Message], bool], timeout: float = 10.0) -> list[Message]:
        """Messages up to and including the first that matches ``predicate``."""
        deadline = time.monotonic() + timeout
        out: list[Message] = []
        while True:
            msg = await self.recv(max(0.01, deadline - time.monotonic()))
            out.append(msg)
            if predicate(msg):
                return out

    async def recv_type(self, kind: str, timeout: float = 10.0) -> Message:
        return (await self.recv_until(lambda m: m["type"] == kind, timeout))[-1]

    async def turn(self, timeout: float = 10.0) -> list[Message]:
        """Messages until a ``turn_end`` or ``interrupted``."""
        return await self.recv_until(lambda m: m["type"] in ("turn_end", "interrupted"), timeout)

    async def quiet(self, seconds: float) -> list[Message]:
        """Everything received during ``seconds`` (used to prove nothing more arrives)."""
        out: list[Message] = []
        deadline = time.monotonic() + seconds
        with contextlib.suppress(TimeoutError):
            while (left := deadline - time.monotonic()) > 0:
                out.append(await self.recv(left))
        return out

    async def stream_audio(
        self, pcm: bytes, *, rate_hz: int = 16000, frame_ms: int = 20, realtime: float = 0.0
    ) -> None:
        """Send ``pcm`` in ``frame_ms`` frames; ``realtime`` = 1.0 paces at real time, 0 sends at once."""
        step = int(rate_hz * frame_ms / 1000) * 2
        for i in range(0, len(pcm), step):
            await self.send({"type": "audio", "data": pcm[i : i + step]})
            if realtime:
                await asyncio.sleep(frame_ms / 1000 / realtime)

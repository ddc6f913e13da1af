"""The WebSocket transport: the hello handshake, framing, and the close codes of the contract.

Knows nothing about stages: ``open_session(hello, send)`` (from the app) validates the hello and
returns an object with ``id``, ``ready()`` and ``run(messages)``. Replies use the hello's framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from server.errors import ProtocolError
from server.metrics import CLOSES_TOTAL, ERRORS_TOTAL
from transports import messages as m
from transports import wire

log = logging.getLogger("voxpipe.ws")
Send = Callable[[Any], Awaitable[None]]


class SessionLike(Protocol):
    id: str

    def ready(self) -> m.Ready: ...

    async def run(self, messages: AsyncIterator[Any]) -> None: ...


OpenSession = Callable[[m.Hello, Send, ServerConnection], SessionLike]


async def _close(ws: ServerConnection, code: int, reason: str) -> None:
    CLOSES_TOTAL.inc(code=str(code))
    await ws.close(code, reason[:120])


async def _send_error(ws: ServerConnection, framing: wire.Framing, err: ProtocolError, *, fatal: bool) -> None:
    ERRORS_TOTAL.inc(code=err.code)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(wire.encode(m.Error(code=err.code, message=err.message, fatal=fatal), framing))


async def _await_hello(ws: ServerConnection, timeout_s: float, open_session: OpenSession) -> tuple[Any, wire.Framing]:
    """Read frames until a valid hello; a frame that is not a hello is fatal (close 1002)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            frame = await asyncio.wait_for(ws.recv(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            err = ProtocolError("hello_timeout", f"no valid hello within {timeout_s:g} s")
            await _send_error(ws, wire.Framing.JSON, err, fatal=True)
            await _close(ws, CloseCode.POLICY_VIOLATION, "hello timeout")
            raise
        framing = wire.framing_of(frame)
        try:
            hello = wire.decode(frame)
        except ProtocolError as exc:
            if exc.code == "bad_field" and wire.parse_frame(frame).get("type") == "hello":
                await _send_error(ws, framing, exc, fatal=False)  # a hello with a bad field: try again
                continue
            hello = exc
        if not isinstance(hello, m.Hello):
            what = hello.message if isinstance(hello, ProtocolError) else f"got {hello.type!r}"
            err = ProtocolError("not_hello", f"the first message must be hello ({what})")
            await _send_error(ws, framing, err, fatal=True)
            await _close(ws, CloseCode.PROTOCOL_ERROR, "first message must be hello")
            raise err
        return hello, framing


async def handle_connection(ws: ServerConnection, *, hello_timeout_s: float, open_session: OpenSession) -> None:
    """One WebSocket connection, from hello to close."""
    try:
        hello, framing = await _await_hello(ws, hello_timeout_s, open_session)
    except (TimeoutError, ProtocolError, ConnectionClosed):
        return

    async def send(message: Any) -> None:
        with contextlib.suppress(ConnectionClosed):  # the reader sees the close too and ends the session
            await ws.send(wire.encode(message, framing))

    while True:
        try:
            session = open_session(hello, send, ws)
            break
        except ProtocolError as exc:
            if exc.fatal:
                await _send_error(ws, framing, exc, fatal=True)
                await _close(ws, exc.close_code or CloseCode.POLICY_VIOLATION, exc.message)
                return
            await _send_error(ws, framing, exc, fatal=False)
            try:
                hello, framing = await _await_hello(ws, hello_timeout_s, open_session)
            except (TimeoutError, ProtocolError, ConnectionClosed):
                return
    await send(session.ready())
    said_bye = False

    async def messages() -> AsyncIterator[Any]:
        nonlocal said_bye
        try:
            async for frame in ws:
                try:
                    msg = wire.decode(frame)
                except ProtocolError as exc:
                    yield exc
                    continue
                if isinstance(msg, m.Bye):
                    said_bye = True
                yield msg
        except ConnectionClosed:
            return

    try:
        await session.run(messages())
    finally:
        if said_bye:
            await _close(ws, CloseCode.NORMAL_CLOSURE, "bye")

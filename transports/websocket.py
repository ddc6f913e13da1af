"""The asyncio loop around a connection protocol object: read frames into it, write what it says, close as it decided.

Every decision (hello, limits, bye, close codes) is the protocol object's (``transports/connection.py``
for ``/ws``); this module only does the I/O: receive with the protocol's deadline, send with the slow-reader
grace, bounded closes. It knows nothing about stages: ``open_session(hello, send)`` (from the app) returns
an object with ``ready()``, ``busy`` and ``run(messages)``, or raises ``ProtocolError`` to refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from transports import messages as m
from transports.connection import ConnectionProtocol
from vocab.errors import ProtocolError
from vocab.metrics import CLOSES_TOTAL, METRICS

SLOW_READERS_TOTAL = METRICS.counter("voxpipe_slow_readers_total", "Sessions closed because the client stopped reading")
REAPED_TOTAL = METRICS.counter("voxpipe_reaped_total", "Connections aborted after their close timeout")


class SessionLike(Protocol):
    in_rate_hz: int

    def ready(self) -> list[Any]:
        """The messages that open the session (``ready`` last), in the order they go out."""
        ...

    def stamp(self, message: Any) -> Any:
        """The message numbered in the session (``session_seq``), for what the connection itself sends."""
        ...

    @property
    def busy(self) -> bool: ...

    async def run(self, messages: AsyncIterator[Any]) -> None: ...


OpenSession = Callable[[m.Hello, m.Send], Awaitable[SessionLike]]


async def close_bounded(ws: ServerConnection, code: int, reason: str) -> None:
    """Close with ``code``; when the close handshake cannot finish (a client that does not read keeps
    the write buffer full, and websockets' ``close`` waits for it), abort the TCP connection."""
    CLOSES_TOTAL.inc(code=str(code))
    try:
        async with asyncio.timeout((ws.close_timeout or 10.0) + 1.0):
            await ws.close(code, reason[:120])
    except TimeoutError:
        ws.transport.abort()


async def _close_owned(ws: ServerConnection, code: int, reason: str) -> None:
    """Close a connection whose reader we own, discarding frames still coming in meanwhile: websockets
    stops reading the socket while its incoming queue is full, so the client's close reply would sit
    behind unread frames (say, messages after ``bye``) and the close would wait out its timeout."""

    async def discard() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()

    drainer = asyncio.create_task(discard())
    try:
        await close_bounded(ws, code, reason)
    finally:
        drainer.cancel()
        await asyncio.wait([drainer])  # waits without taking on the drainer's cancellation


async def reap_closing(server: Server, interval_s: float = 1.0) -> None:
    """Abort connections stuck in the closing handshake past their close deadline. Runs until cancelled.

    websockets enforces ``close_timeout`` only when something sends (our code or a keepalive ping). After
    it failed a connection for a bad frame (1002/1007/1009), a peer that never closes its side of TCP would
    otherwise keep the handler, its session and its place in the caps until the next ping (forever when
    ``ping_interval`` is null).
    """
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        now = loop.time()
        for ws in list(server.all_connections):
            deadline = ws.close_deadline
            if deadline is not None and now > deadline and ws.state is not State.CLOSED:
                REAPED_TOTAL.inc()
                ws.transport.abort()


class _Socket:
    """The I/O half of one connection. ``send`` is the session's sender (its outbox is the only caller)."""

    def __init__(self, ws: ServerConnection, conn: ConnectionProtocol, *, slow_reader_grace_s: float | None) -> None:
        self.ws = ws
        self.conn = conn
        self.grace_s = slow_reader_grace_s
        self.on_stall: Callable[[], None] = lambda: None

    async def recv(self) -> Any:
        """The next frame, or None when the protocol's deadline came first (cancellation-safe)."""
        due = self.conn.deadline()
        when = None if due is None else asyncio.get_running_loop().time() + (due - time.monotonic())
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for loses a cancellation that races a frame
            async with asyncio.timeout_at(when):
                return await self.ws.recv()
        except TimeoutError:
            self.conn.timeout(time.monotonic())
            return None

    async def flush(self) -> None:
        """The protocol's own frames (errors, ready), each bounded by the close timeout."""
        for frame in self.conn.data_to_send():
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                async with asyncio.timeout(self.ws.close_timeout or 10.0):
                    await self.ws.send(frame)

    async def send(self, message: Any) -> None:
        """Cancellation-safe: each frame is handed to the socket whole or not at all."""
        if self.conn.close is not None:
            return
        for frame in self.conn.encode(message):
            try:
                async with asyncio.timeout(self.grace_s):
                    await self.ws.send(frame)
            except ConnectionClosed:
                return  # the reader sees the close too and ends the session
            except TimeoutError:
                SLOW_READERS_TOTAL.inc()
                self.conn.stalled(self.grace_s or 0.0)
                self.on_stall()
                return

    async def messages(self) -> AsyncIterator[Any]:
        """Frames -> the protocol -> messages for the session, until the protocol decides to close."""
        with contextlib.suppress(ConnectionClosed):
            while self.conn.close is None:
                frame = await self.recv()
                if frame is not None:
                    for message in self.conn.receive(frame, time.monotonic()):
                        yield message

    async def finish(self) -> None:
        """Send what the protocol still has to say, then close with its code."""
        close = self.conn.close
        if close is None:
            return
        await self.flush()
        await _close_owned(self.ws, close.code, close.reason)


async def serve_connection(
    ws: ServerConnection,
    conn: ConnectionProtocol,
    open_session: OpenSession,
    *,
    slow_reader_grace_s: float | None,
) -> None:
    """One connection, from its first frame to its close."""
    sock = _Socket(ws, conn, slow_reader_grace_s=slow_reader_grace_s)
    try:
        session = await _open(sock, conn, open_session)
        if session is not None:
            await _run(sock, session)
    finally:
        await sock.finish()


async def _open(sock: _Socket, conn: ConnectionProtocol, open_session: OpenSession) -> SessionLike | None:
    """Frames until the protocol hands over a hello, then a session for it (or the protocol's refusal)."""
    pending = conn.start(time.monotonic())
    try:
        while conn.close is None:
            if not pending:
                await sock.flush()
                frame = await sock.recv()
                pending = [] if frame is None else conn.receive(frame, time.monotonic())
                continue
            hello = pending.pop(0)
            try:
                session = await open_session(hello, sock.send)
            except ProtocolError as exc:
                conn.refuse(exc)
                continue
            conn.accept(
                session.ready(),
                in_rate_hz=session.in_rate_hz,
                busy=_busy_of(session),
                now=time.monotonic(),
                stamp=session.stamp,
            )
            await sock.flush()
            return session
    except ConnectionClosed:
        return None
    return None


def _busy_of(session: SessionLike) -> Callable[[], bool]:
    return lambda: session.busy


async def _run(sock: _Socket, session: SessionLike) -> None:
    running = asyncio.create_task(session.run(sock.messages()))

    def stall() -> None:
        running.cancel()  # the client stopped reading: end the session now, whatever it awaits

    sock.on_stall = stall
    try:
        await running
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if sock.conn.close is None or (current is not None and current.cancelling()):
            running.cancel()
            await asyncio.wait([running])  # the session's tasks end before the handler does
            raise  # the connection's handler itself is being cancelled

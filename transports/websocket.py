"""The WebSocket transport: the hello handshake, framing, limits, and the close codes of the contract.

Knows nothing about stages: ``open_session(hello, send)`` (from the app) validates the hello and
returns an object with ``id``, ``ready()``, ``busy`` and ``run(messages)``. Replies use the hello's
framing. The read loop consults a ``SessionLimiter`` for every frame; a fatal limit ends the session,
then the client gets the ``error`` and the close code (1008 for limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State

from server.errors import ProtocolError
from server.limits import LimitOptions, SessionLimiter, slow_reader_error
from server.metrics import CLOSES_TOTAL, ERRORS_TOTAL, METRICS
from transports import messages as m
from transports import wire

log = logging.getLogger("voxpipe.ws")
Send = Callable[[Any], Awaitable[None]]
MAX_HELLO_ATTEMPTS = 8  # hellos with a bad field before the connection is closed
SLOW_READERS_TOTAL = METRICS.counter("voxpipe_slow_readers_total", "Sessions closed because the client stopped reading")
REAPED_TOTAL = METRICS.counter("voxpipe_reaped_total", "Connections aborted after their close timeout")
ENCODE_FAILURES_TOTAL = METRICS.counter("voxpipe_encode_failures_total", "Server messages that could not be encoded")


class SessionLike(Protocol):
    id: str

    def ready(self) -> m.Ready: ...

    @property
    def busy(self) -> bool: ...

    async def run(self, messages: AsyncIterator[Any]) -> None: ...


OpenSession = Callable[[m.Hello, Send, ServerConnection], SessionLike]


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


async def _send_error(ws: ServerConnection, framing: wire.Framing, err: ProtocolError, *, fatal: bool) -> None:
    ERRORS_TOTAL.inc(code=err.code)
    with contextlib.suppress(ConnectionClosed, TimeoutError):
        async with asyncio.timeout(ws.close_timeout or 10.0):
            await ws.send(wire.encode(m.Error(code=err.code, message=err.message, fatal=fatal), framing))


async def _await_hello(ws: ServerConnection, deadline: float, timeout_s: float) -> tuple[m.Hello, wire.Framing]:
    """Read frames until a valid hello; a frame that is not a hello is fatal (close 1002)."""
    attempts = 0
    while True:
        try:
            frame = await asyncio.wait_for(ws.recv(), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            err = ProtocolError("hello_timeout", f"no valid hello within {timeout_s:g} s")
            await _send_error(ws, wire.Framing.JSON, err, fatal=True)
            await close_bounded(ws, CloseCode.POLICY_VIOLATION, "hello timeout")
            raise
        framing = wire.framing_of(frame)
        try:
            hello = wire.decode(frame)
        except ProtocolError as exc:
            attempts += 1
            is_hello = exc.code == "bad_field" and wire.parse_frame(frame).get("type") == "hello"
            if is_hello and attempts < MAX_HELLO_ATTEMPTS:
                await _send_error(ws, framing, exc, fatal=False)  # a hello with a bad field: try again
                continue
            hello = exc
        if not isinstance(hello, m.Hello):
            what = hello.message if isinstance(hello, ProtocolError) else f"got {hello.type!r}"
            err = ProtocolError("not_hello", f"the first message must be hello ({what})")
            await _send_error(ws, framing, err, fatal=True)
            await close_bounded(ws, CloseCode.PROTOCOL_ERROR, "first message must be hello")
            raise err
        return hello, framing


async def _open(
    ws: ServerConnection, hello_timeout_s: float, open_session: OpenSession, send_for: Callable[[wire.Framing], Send]
) -> tuple[SessionLike, m.Hello, wire.Framing] | None:
    """Hello -> session, retrying after non-fatal hello errors until one overall deadline."""
    deadline = time.monotonic() + hello_timeout_s
    for _ in range(MAX_HELLO_ATTEMPTS):
        try:
            hello, framing = await _await_hello(ws, deadline, hello_timeout_s)
        except (TimeoutError, ProtocolError, ConnectionClosed):
            return None
        try:
            return open_session(hello, send_for(framing), ws), hello, framing
        except ProtocolError as exc:
            if exc.fatal:
                await _send_error(ws, framing, exc, fatal=True)
                await close_bounded(ws, exc.close_code or CloseCode.POLICY_VIOLATION, exc.message)
                return None
            await _send_error(ws, framing, exc, fatal=False)
    await close_bounded(ws, CloseCode.POLICY_VIOLATION, "too many bad hellos")
    return None


async def handle_connection(
    ws: ServerConnection,
    *,
    hello_timeout_s: float,
    open_session: OpenSession,
    limits: LimitOptions | None = None,
    max_frame_bytes: int = 1 << 20,
) -> None:
    """One WebSocket connection, from hello to close."""
    limits = limits or LimitOptions()
    grace_s = limits.slow_reader_grace_s
    stalled = False  # the client stopped reading: drop whatever is still to send
    closing: ProtocolError | None = None  # the fatal limit that ends the session
    running: asyncio.Task[None] | None = None  # the session's run, cancelled by a fatal limit

    def fail(err: ProtocolError) -> None:
        """A fatal limit: end the session now, whatever input is still queued on the way to it."""
        nonlocal closing
        if closing is None:
            closing = err
        if running is not None:
            running.cancel()

    def send_for(framing: wire.Framing) -> Send:
        async def send(message: Any) -> None:
            """Cancellation-safe: the frame is handed to the socket whole or not at all."""
            nonlocal stalled
            if stalled:
                return
            try:
                frame = wire.encode(message, framing)
                data = frame.encode("utf-8") if isinstance(frame, str) else frame
            except (ValueError, TypeError, UnicodeError) as exc:  # a bug, not the client's fault: never fatal
                ENCODE_FAILURES_TOTAL.inc()
                log.error("cannot encode %s: %r", type(message).__name__, exc)
                return
            try:
                async with asyncio.timeout(grace_s):
                    await ws.send(data, text=framing is wire.Framing.JSON)
            except ConnectionClosed:
                return  # the reader sees the close too and ends the session
            except TimeoutError:
                stalled = True
                SLOW_READERS_TOTAL.inc()
                fail(slow_reader_error(grace_s or 0.0))

        return send

    opened = await _open(ws, hello_timeout_s, open_session, send_for)
    if opened is None:
        return
    session, hello, framing = opened
    limiter = SessionLimiter(
        limits, in_rate_hz=hello.audio_in.rate, max_frame_bytes=max_frame_bytes, busy=lambda: session.busy
    )
    await send_for(framing)(session.ready())
    said_bye = False

    async def read_frame(lim: SessionLimiter) -> Any:
        """The next frame, or None when a deadline (idle, max duration) came first."""
        due = lim.deadline()
        when = None if due is None else asyncio.get_running_loop().time() + (due - time.monotonic())
        try:
            async with asyncio.timeout_at(when):
                return await ws.recv()  # cancellation-safe: a cancelled recv loses no frame
        except TimeoutError:
            return None

    async def messages(lim: SessionLimiter) -> AsyncIterator[Any]:
        nonlocal said_bye
        try:
            while closing is None:
                frame = await read_frame(lim)
                err = lim.expired() if frame is None else lim.on_frame()
                if err is not None:
                    fail(err)
                    return
                if frame is None:
                    continue
                try:
                    msg = wire.decode(frame)
                except ProtocolError as exc:
                    yield exc
                    continue
                err = lim.on_message(msg)
                if err is not None and err.fatal:
                    fail(err)
                    return
                if err is not None:
                    yield err
                    continue
                if isinstance(msg, m.Bye):
                    said_bye = True
                yield msg
        except ConnectionClosed:
            return

    running = asyncio.create_task(session.run(messages(limiter)), name=f"{session.id}:session")
    try:
        try:
            await running
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if closing is None or (current is not None and current.cancelling()):
                running.cancel()
                await asyncio.wait([running])  # the session's tasks end before the handler does
                raise  # the connection's handler itself is being cancelled
    finally:
        if closing is not None:
            if not stalled:
                await _send_error(ws, framing, closing, fatal=True)
            await _close_owned(ws, closing.close_code or CloseCode.POLICY_VIOLATION, closing.message)
        elif said_bye:
            await _close_owned(ws, CloseCode.NORMAL_CLOSURE, "bye")

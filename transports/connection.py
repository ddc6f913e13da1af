"""The sans-I/O protocol of one ``/ws`` connection: the hello handshake, the limits, bye, and the close decision.

As ``websockets``' ``ServerProtocol``: frames and the time go in (``receive``, ``timeout``), messages for
the session come out of ``receive``, frames for the socket out of ``data_to_send``, and ``close`` says how
the connection ends. No socket and no event loop here, so every hardening case is a plain method call
(tests/transports/test_connection.py); the asyncio loop around it is ``transports/websocket.py``.
A second wire dialect (the OpenAI Realtime events) is a second class with the same interface.

Lifecycle: ``hello`` (frames until a valid hello; the caller opens a session and calls ``accept`` or
``refuse``) -> ``open`` (messages for the session) -> ``closing`` once ``close`` is set.
Server messages may come ``Sequenced`` (with their ``session_seq``); ``encode`` puts the number on the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from websockets.frames import CloseCode

from transports import messages as m
from transports import wire
from transports.limits import LimitOptions, SessionLimiter, slow_reader_error
from vocab.errors import ProtocolError
from vocab.metrics import ERRORS_TOTAL, METRICS

log = logging.getLogger("voxpipe.ws")
MAX_HELLO_ATTEMPTS = 8  # hellos with a bad field before the connection is closed
ENCODE_FAILURES_TOTAL = METRICS.counter("voxpipe_encode_failures_total", "Server messages that could not be encoded")
Phase = Literal["hello", "open", "closing"]


@dataclass(frozen=True, slots=True)
class Close:
    """How the connection ends: the close code and reason (the fatal ``error``, if any, is already queued)."""

    code: int
    reason: str


class ConnectionProtocol(Protocol):
    """What the asyncio loop needs from a dialect's connection object."""

    phase: Phase
    close: Close | None

    def start(self, now: float) -> list[Any]: ...

    def receive(self, frame: wire.Frame, now: float) -> list[Any]: ...

    def accept(
        self,
        opening: list[Any],
        *,
        in_rate_hz: int,
        busy: Callable[[], bool],
        now: float,
        stamp: Callable[[Any], Any] = lambda message: message,
    ) -> None: ...

    def refuse(self, err: ProtocolError) -> None: ...

    def encode(self, message: Any) -> list[wire.Frame]: ...

    def data_to_send(self) -> list[wire.Frame]: ...

    def expire_at(self, when: float | None) -> None: ...

    def deadline(self) -> float | None: ...

    def timeout(self, now: float) -> None: ...

    def stalled(self, grace_s: float) -> None: ...


def _graph_entries(opening: list[Any]) -> list[tuple[str, str]]:
    """(name, input type) of each stage of the ``ready`` among the opening messages: an ``input`` is charged by
    the stage it enters (``SessionLimiter``)."""
    messages = [msg.message if isinstance(msg, m.Sequenced) else msg for msg in opening]
    ready = next((msg for msg in reversed(messages) if isinstance(msg, m.Ready)), None)
    return [] if ready is None else [(node.name, node.input) for node in ready.graph]


class Connection:
    """The wire contract's connection rules for one client. Not thread-safe; one per socket."""

    def __init__(
        self,
        *,
        limits: LimitOptions,
        hello_timeout_s: float,
        max_frame_bytes: int,
        now: float,
        max_hello_attempts: int = MAX_HELLO_ATTEMPTS,
    ) -> None:
        self.limits = limits
        self.hello_timeout_s = hello_timeout_s
        self.max_frame_bytes = max_frame_bytes
        self.max_hello_attempts = max_hello_attempts
        self.phase: Phase = "hello"
        self.framing = wire.Framing.JSON  # replies follow the hello's framing; JSON until one arrives
        self.hello: m.Hello | None = None
        self.close: Close | None = None
        self.limiter: SessionLimiter | None = None
        self._hello_deadline = now + hello_timeout_s
        self._expires_at: float | None = None  # the session's credential ends then (``expire_at``), till the limiter
        self._attempts = 0
        self._out: list[wire.Frame] = []
        self._stamp: Callable[[Any], Any] = lambda message: message

    # ------------------------------------------------------------ input

    def start(self, now: float) -> list[Any]:
        """Events due at connection time: none for ``/ws`` (the client speaks first, with ``hello``)."""
        return []

    def receive(self, frame: wire.Frame, now: float) -> list[Any]:
        """One frame in. Before the session: ``[Hello]`` once a valid hello arrived. After: messages and
        non-fatal ``ProtocolError``s for the session. Fatal problems set ``close`` and return nothing."""
        if self.close is not None:
            return []
        if self.phase == "hello":
            return self._receive_hello(frame)
        assert self.limiter is not None
        err = self.limiter.on_frame(now)
        if err is not None:
            self._fail(err)
            return []
        try:
            msg = wire.decode(frame)
        except ProtocolError as exc:
            return [exc]
        err = self.limiter.on_message(msg, now)
        if err is not None:
            if err.fatal:
                self._fail(err)
                return []
            return [err]
        if type(msg) is m.Bye:
            self._closing(Close(CloseCode.NORMAL_CLOSURE, "bye"))
        return [msg]

    def _receive_hello(self, frame: wire.Frame) -> list[Any]:
        framing = wire.framing_of(frame)
        try:
            hello: Any = wire.decode(frame)
        except ProtocolError as exc:
            self._attempts += 1
            is_hello = exc.code == "bad_field" and wire.parse_frame(frame).get("type") == "hello"
            if is_hello and self._attempts < self.max_hello_attempts:
                self._error(exc, framing, fatal=False)  # a hello with a bad field: try again
                return []
            hello = exc
        if not isinstance(hello, m.Hello):
            what = hello.message if isinstance(hello, ProtocolError) else f"got {hello.type!r}"
            err = ProtocolError("not_hello", f"the first message must be hello ({what})")
            self._fail(err, framing=framing, code=CloseCode.PROTOCOL_ERROR, reason="first message must be hello")
            return []
        self.framing = framing
        self.hello = hello
        return [hello]

    # ------------------------------------------------------------ the session's answer to a hello

    def accept(
        self,
        opening: list[Any],
        *,
        in_rate_hz: int,
        busy: Callable[[], bool],
        now: float,
        stamp: Callable[[Any], Any] = lambda message: message,
    ) -> None:
        """A session opened for the hello: its opening messages go out (``ready`` last), the limits start.
        ``stamp`` numbers the protocol's own messages from now on (the session's ``session_seq``)."""
        self.phase = "open"
        self._stamp = stamp
        self.limiter = SessionLimiter(
            self.limits,
            in_rate_hz=in_rate_hz,
            max_frame_bytes=self.max_frame_bytes,
            now=now,
            busy=busy,
            entries=_graph_entries(opening),
            expires_at=self._expires_at,
        )
        for message in opening:
            self._out += self.encode(message)

    def refuse(self, err: ProtocolError) -> None:
        """No session for this hello: a fatal error closes; another kind waits for a better hello."""
        if err.fatal:
            self._fail(err, code=err.close_code or CloseCode.POLICY_VIOLATION)
            return
        self._attempts += 1
        self._error(err, self.framing, fatal=False)
        if self._attempts >= self.max_hello_attempts:
            self._closing(Close(CloseCode.POLICY_VIOLATION, "too many bad hellos"))

    # ------------------------------------------------------------ time

    def expire_at(self, when: float | None) -> None:
        """The session's credential (a JWT's ``exp``) ends at ``when`` (monotonic): then ``error
        token_expired`` and close 1008, whatever the session is doing. None: it does not expire."""
        self._expires_at = when
        if self.limiter is not None:
            self.limiter.expires_at = when

    def deadline(self) -> float | None:
        """When ``timeout`` should next be called (monotonic), or None."""
        if self.close is not None:
            return None
        if self.phase == "hello":
            return self._hello_deadline
        assert self.limiter is not None
        return self.limiter.deadline()

    def timeout(self, now: float) -> None:
        """A deadline passed: the hello timeout, the token's end, idle time or the maximum session length."""
        if self.close is not None:
            return
        if self.phase == "hello":
            if now >= self._hello_deadline:
                err = ProtocolError("hello_timeout", f"no valid hello within {self.hello_timeout_s:g} s")
                self._fail(err, code=CloseCode.POLICY_VIOLATION, reason="hello timeout")
            return
        assert self.limiter is not None
        expired = self.limiter.expired(now)
        if expired is not None:
            self._fail(expired)

    def stalled(self, grace_s: float) -> None:
        """A send waited ``grace_s``: the client stopped reading. Close 1008 with nothing more sent."""
        err = slow_reader_error(grace_s)
        self._out.clear()
        self._closing(Close(err.close_code or CloseCode.POLICY_VIOLATION, err.message))

    # ------------------------------------------------------------ output

    def encode(self, message: Any) -> list[wire.Frame]:
        """A server message as frames in the hello's framing; none when it cannot be encoded (a bug, counted)."""
        try:
            return [wire.encode(message, self.framing)]
        except (ValueError, TypeError, UnicodeError, OverflowError) as exc:  # never the client's fault
            ENCODE_FAILURES_TOTAL.inc()
            log.error("cannot encode %s: %r", type(message).__name__, exc)
            return []

    def data_to_send(self) -> list[wire.Frame]:
        """Frames the protocol itself sends (errors before the session, ``ready``, the fatal error)."""
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------ internals

    def _error(self, err: ProtocolError, framing: wire.Framing, *, fatal: bool) -> None:
        ERRORS_TOTAL.inc(code=err.code)
        self._out.append(wire.encode(self._stamp(m.Error(code=err.code, message=err.message, fatal=fatal)), framing))

    def _fail(
        self, err: ProtocolError, *, framing: wire.Framing | None = None, code: int | None = None, reason: str = ""
    ) -> None:
        if self.close is not None:
            return
        self._error(err, framing or self.framing, fatal=True)
        self._closing(Close(code or err.close_code or CloseCode.POLICY_VIOLATION, reason or err.message))

    def _closing(self, close: Close) -> None:
        if self.close is None:
            self.close = close
            self.phase = "closing"

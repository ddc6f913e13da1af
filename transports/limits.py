"""Per-connection limits (config section ``limits``): message and audio rates, idle time, session length.

``SessionLimiter`` is consulted by the connection protocol (``transports/connection.py``) for every frame;
it answers with a ``ProtocolError`` when the client crossed a line (fatal ones close the socket, 1008)
and says when the next deadline (idle, max duration) is due. Sans-I/O: every call takes the time.
The caps on sessions per process / IP / user live in ``server.admission``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.frames import CloseCode

from transports import messages as m
from vocab.errors import ProtocolError
from vocab.options import require


@dataclass(frozen=True, slots=True)
class LimitOptions:
    """Every limit has a safe default; ``null`` in YAML turns one off."""

    # per session
    messages_per_s: float | None = 200.0  # sustained client messages (any kind, valid or not)
    messages_burst: int = 400  # messages allowed at once above the sustained rate
    audio_max_realtime: float | None = 2.0  # sustained audio faster than this x real time is a flood
    audio_burst_s: float = 10.0  # audio (seconds) allowed at once; never less than one max-size frame
    max_text_chars: int | None = 4000  # text/say/input text and hello.session.system_prompt
    max_ping_id_chars: int = 128  # ping ids are echoed: keep them small
    idle_timeout_s: float | None = 300.0  # no client message and no turn in progress
    max_session_s: float | None = 3600.0  # hard cap on one connection's life
    slow_reader_grace_s: float | None = 10.0  # a send blocked this long (client not reading) closes 1008
    # caps (server.max_sessions is the per-process cap)
    max_sessions_per_ip: int | None = 20  # connections open from one client IP (before and after hello)
    max_pending_per_ip: int | None = 4  # of those, still waiting for their hello (silent connections)
    max_sessions_per_user: int | None = 5  # sessions of one authenticated user (token subject)
    client_ip_header: str | None = None  # e.g. X-Forwarded-For or X-Real-IP, set by a reverse proxy
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1", "::1"])  # who may set it

    def validate(self) -> None:
        for key in ("messages_per_s", "audio_max_realtime", "idle_timeout_s", "max_session_s", "slow_reader_grace_s"):
            value = getattr(self, key)
            require(value is None or (value > 0 and math.isfinite(value)), key, "must be > 0 (or null: off)")
        require(self.messages_burst >= 1, "messages_burst", "must be >= 1")
        require(self.audio_burst_s > 0, "audio_burst_s", "must be > 0")
        require(self.max_text_chars is None or self.max_text_chars >= 1, "max_text_chars", "must be >= 1")
        require(self.max_ping_id_chars >= 1, "max_ping_id_chars", "must be >= 1")
        for key in ("max_sessions_per_ip", "max_pending_per_ip", "max_sessions_per_user"):
            value = getattr(self, key)
            require(value is None or value >= 1, key, "must be >= 1 (or null: off)")


class TokenBucket:
    """``rate`` units per second sustained, ``capacity`` at once; ``take`` says whether the cost fits."""

    __slots__ = ("capacity", "level", "rate", "updated_at")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.updated_at = now

    def take(self, cost: float, now: float) -> bool:
        self.level = min(self.capacity, self.level + (now - self.updated_at) * self.rate)
        self.updated_at = now
        if cost > self.level:
            return False
        self.level -= cost
        return True


def _policy(code: str, message: str) -> ProtocolError:
    return ProtocolError(code, message, fatal=True, close_code=CloseCode.POLICY_VIOLATION)


class SessionLimiter:
    """The limits of one connection once its hello is in. Not thread-safe; one per read loop."""

    def __init__(
        self,
        options: LimitOptions,
        *,
        in_rate_hz: int,
        max_frame_bytes: int,
        now: float,
        busy: Callable[[], bool] = lambda: False,
        entries: Sequence[tuple[str, str]] = (),
        expires_at: float | None = None,
    ) -> None:
        """``entries``: the graph's stages as (name, input type), in ``ready.graph`` order, so that an ``input``
        is charged by where it goes (text stages: the text limit; audio and speech: the audio budget).
        ``expires_at``: when the session's credential (a JWT's ``exp``) ends (monotonic), or None."""
        self.options = options
        self.expires_at = expires_at
        self.busy = busy
        self.entries = list(entries)
        self.input_types = dict(self.entries)
        self.started_at = now
        self.last_message_at = now
        self.messages = (
            TokenBucket(options.messages_per_s, options.messages_burst, now) if options.messages_per_s else None
        )
        self.audio_bytes_per_s = in_rate_hz * 2
        self.audio: TokenBucket | None = None
        if options.audio_max_realtime:
            frame_s = max_frame_bytes / self.audio_bytes_per_s  # one max-size frame always fits
            capacity = max(options.audio_burst_s, frame_s) * self.audio_bytes_per_s
            self.audio = TokenBucket(options.audio_max_realtime * self.audio_bytes_per_s, capacity, now)

    # ------------------------------------------------------------ per frame

    def on_frame(self, now: float) -> ProtocolError | None:
        """A frame arrived (before decoding: garbage counts too). Fatal error when over the message rate."""
        self.last_message_at = now
        if self.messages is not None and not self.messages.take(1.0, now):
            rate = self.options.messages_per_s
            return _policy("rate_limited", f"more than {rate:g} messages/s sustained; closing")
        return None

    def on_message(self, msg: Any, now: float) -> ProtocolError | None:
        """A decoded message: audio budget (fatal), text length and ping id size (not fatal).

        What counts is where a message goes, not its framing: ``input`` for a text stage is text whether it
        came as a string or as bytes (decoded as UTF-8 there), and for an audio stage it is audio whether it
        came as bytes or as base64 text in JSON.
        """
        kind = type(msg)
        if kind is m.Audio:
            return self._audio(len(msg.data), now)
        if kind is m.Input:
            if self._input_is_audio(msg):
                data = msg.data
                size = len(data) if isinstance(data, bytes) else len(data) * 3 // 4 - data[-2:].count("=")
                return self._audio(size, now)  # base64 text: its decoded size
            return self._text(msg)
        if kind is m.Text or kind is m.Say:
            return self._text(msg)
        if kind is m.Ping and isinstance(msg.id, str | bytes) and len(msg.id) > self.options.max_ping_id_chars:
            return ProtocolError("bad_field", f"ping.id: must be at most {self.options.max_ping_id_chars} long")
        return None

    def _input_is_audio(self, msg: m.Input) -> bool:
        if msg.stage is not None:
            taken = self.input_types.get(msg.stage)
        elif msg.entry is not None and 0 <= msg.entry < len(self.entries):
            taken = self.entries[msg.entry][1]
        else:
            taken = None
        if taken is None:  # no such stage (the session refuses it): judged by its framing
            return isinstance(msg.data, bytes)
        return taken in ("audio", "speech")

    def _audio(self, size_bytes: int, now: float) -> ProtocolError | None:
        if self.audio is not None and not self.audio.take(size_bytes, now):
            factor = self.options.audio_max_realtime
            return _policy("rate_limited", f"audio arrives faster than {factor:g}x real time; closing")
        return None

    def _text(self, msg: m.Text | m.Say | m.Input) -> ProtocolError | None:
        limit = self.options.max_text_chars
        if limit is None:
            return None
        text = msg.data if isinstance(msg, m.Input) else msg.text
        if isinstance(text, bytes):
            # UTF-8 takes 1..4 bytes a character: decode only when the byte count cannot settle it
            chars = len(text) if len(text) <= limit else len(text.decode("utf-8", "replace"))
        else:
            chars = len(text)
        if chars > limit:
            return ProtocolError("too_long", f"{msg.type}: text is over {limit} characters")
        return None

    # ------------------------------------------------------------ deadlines

    def deadline(self) -> float | None:
        """Monotonic time when ``expired`` should next be asked, or None (no deadline)."""
        times = [] if self.expires_at is None else [self.expires_at]
        if self.options.idle_timeout_s is not None:
            times.append(self.last_message_at + self.options.idle_timeout_s)
        if self.options.max_session_s is not None:
            times.append(self.started_at + self.options.max_session_s)
        return min(times) if times else None

    def expired(self, now: float) -> ProtocolError | None:
        """The fatal error due at ``now`` (the token's end, max duration, idle while no turn runs), or None."""
        opts = self.options
        if self.expires_at is not None and now >= self.expires_at:
            return _policy("token_expired", "the session's token has expired")
        if opts.max_session_s is not None and now >= self.started_at + opts.max_session_s:
            return _policy("max_duration", f"the session reached its maximum length ({opts.max_session_s:g} s)")
        if opts.idle_timeout_s is not None and now >= self.last_message_at + opts.idle_timeout_s:
            if self.busy():
                self.last_message_at = now  # the agent is still talking: not idle; look again later
                return None
            return _policy("idle_timeout", f"no message for {opts.idle_timeout_s:g} s")
        return None


def slow_reader_error(grace_s: float) -> ProtocolError:
    return _policy("slow_reader", f"the client has not read its messages for {grace_s:g} s")

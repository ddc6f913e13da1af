"""The tracing facade: spans of a turn, with nothing behind them unless the server installs a tracer.

Stages and the server speak only this vocabulary. With telemetry off every span is ``NOOP_SPAN``, whose
methods do nothing and whose ``child`` is itself, so a traced call costs a method call per turn, clause or
upstream attempt (never per audio frame). With ``telemetry.traces: true`` the server hands in a tracer
backed by the OpenTelemetry SDK (``server/otel.py``); this module never imports it.

Times are ``time.monotonic()`` readings (the clock the session runs on), ``None`` meaning now. Attributes
are keyword arguments and are exported under ``voxpipe.<name>``. A span used as a context manager ends
``ok``, ``cancelled`` (``CancelledError``, ``GeneratorExit``: barge-in, a closed stream) or ``error`` (with
the error's stable code, never its message: messages can carry user text).

The span a piece of work runs under is also kept in a context variable (``use_span`` / ``current_span``),
so code below a stage (``stages/upstream.py``) attaches its spans without being handed one.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Literal

Attribute = str | int | float | bool
Outcome = Literal["ok", "cancelled", "error"]


def outcome_of(exc: BaseException | None) -> tuple[Outcome, str | None]:
    """How work that raised ``exc`` (None: returned) ended, and the error code to record."""
    if exc is None:
        return "ok", None
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return "cancelled", None
    return "error", str(getattr(exc, "code", None) or type(exc).__name__)


class Span:
    """A span of work. This base class is the no-op one (telemetry off); ``server/otel.py`` records."""

    __slots__ = ()
    recording: ClassVar[bool] = False

    @property
    def trace_id(self) -> str | None:
        """The trace's id (32 hex digits) when recording, for log lines that point at their trace."""
        return None

    def child(self, name: str, *, at: float | None = None, **attributes: Attribute) -> Span:
        """A span inside this one, started ``at`` (monotonic seconds; None: now)."""
        return self

    def set(self, **attributes: Attribute) -> None:
        """Add or overwrite attributes."""

    def end(self, outcome: Outcome = "ok", *, at: float | None = None, error: str | None = None) -> None:
        """End the span ``at`` (None: now); a second ``end`` changes nothing."""

    def __enter__(self) -> Span:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.recording:
            outcome, code = outcome_of(exc)
            self.end(outcome, error=code)


NOOP_SPAN = Span()


class Tracer:
    """Starts the root span of a trace (one per turn). This base class is the no-op one."""

    __slots__ = ()
    enabled: ClassVar[bool] = False

    def start(self, name: str, *, at: float | None = None, **attributes: Attribute) -> Span:
        return NOOP_SPAN

    def shutdown(self) -> None:
        """Flush what is buffered and stop exporting (server shutdown)."""


NOOP_TRACER = Tracer()

TraceOf = Callable[[int], Span]


def no_trace(turn: int) -> Span:
    """``StageContext.trace`` when nothing is traced: every turn's span is the no-op."""
    return NOOP_SPAN


_current: contextvars.ContextVar[Span] = contextvars.ContextVar("voxpipe_current_span", default=NOOP_SPAN)


def current_span() -> Span:
    """The span the running task's work belongs to (``NOOP_SPAN`` when none)."""
    return _current.get()


class use_span:  # lower-case, as contextlib's context managers
    """``with use_span(span):`` makes ``span`` the current span of this task until the block ends."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: contextvars.Token[Span] | None = None

    def __enter__(self) -> Span:
        self._token = _current.set(self._span)
        return self._span

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None

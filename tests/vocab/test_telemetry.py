"""vocab/telemetry.py: the no-op span and tracer, outcomes of finished work, the current span per task."""

from __future__ import annotations

import asyncio

import pytest

from vocab.errors import UpstreamError
from vocab.telemetry import NOOP_SPAN, NOOP_TRACER, current_span, no_trace, outcome_of, use_span


def test_the_noop_span_is_its_own_child_and_records_nothing() -> None:
    span = NOOP_TRACER.start("turn", at=1.0, session="s")
    assert span is NOOP_SPAN
    assert not span.recording
    assert span.trace_id is None
    assert span.child("llm.generate", stage="llm") is NOOP_SPAN
    span.set(deltas=3)
    span.end("cancelled")
    with span as inside:
        assert inside is NOOP_SPAN
    assert no_trace(7) is NOOP_SPAN
    assert NOOP_TRACER.enabled is False


def test_outcome_of_names_cancellation_and_the_stable_code() -> None:
    assert outcome_of(None) == ("ok", None)
    assert outcome_of(asyncio.CancelledError()) == ("cancelled", None)
    assert outcome_of(GeneratorExit()) == ("cancelled", None)
    assert outcome_of(UpstreamError("http://x: HTTP 500: the user's words", code="upstream_unavailable")) == (
        "error",
        "upstream_unavailable",
    )
    assert outcome_of(ValueError("text")) == ("error", "ValueError")


class Marker(type(NOOP_SPAN)):  # type: ignore[misc]
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


async def test_the_current_span_belongs_to_the_task() -> None:
    outer, inner = Marker("outer"), Marker("inner")
    seen: list[str] = []

    async def other_task() -> None:
        seen.append(getattr(current_span(), "name", "none"))

    assert current_span() is NOOP_SPAN
    with use_span(outer):
        task = asyncio.create_task(other_task())  # a task made here inherits the span (contextvars)
        with use_span(inner):
            assert current_span() is inner
            await task
        assert current_span() is outer
    assert current_span() is NOOP_SPAN
    assert seen == ["outer"]


def test_use_span_restores_on_an_exception() -> None:
    with pytest.raises(KeyError), use_span(Marker("x")):
        raise KeyError("boom")
    assert current_span() is NOOP_SPAN

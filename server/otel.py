"""The OpenTelemetry SDK behind the tracing facade (``vocab/telemetry.py``): imported only when traces are on.

One ``TracerProvider`` per running server (not the global one, so several servers in one process, as in
the tests, keep their spans apart), a resource with ``service.name`` and ``service.instance.id``, and one
exporter: ``otlp`` (HTTP/protobuf, or gRPC when ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL=grpc`` and its
package is installed), ``console`` (JSON per span on stdout) or ``memory`` (the SDK's in-memory exporter,
for tests). Endpoint, headers, timeouts and the sampler come from the standard ``OTEL_*`` variables,
which the SDK and the exporters read themselves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from vocab.errors import ConfigError
from vocab.telemetry import Attribute, Outcome, Span, Tracer, outcome_of

PREFIX = "voxpipe."


def _attributes(attributes: Mapping[str, Attribute]) -> dict[str, Attribute]:
    return {PREFIX + key: value for key, value in attributes.items()}


class OtelSpan(Span):
    """A recording span; ``at`` times are monotonic seconds, turned into the SDK's epoch nanoseconds."""

    __slots__ = ("_ended", "_offset_ns", "_span", "_tracer")
    recording: ClassVar[bool] = True

    def __init__(self, span: otel_trace.Span, tracer: otel_trace.Tracer, offset_ns: int) -> None:
        self._span = span
        self._tracer = tracer
        self._offset_ns = offset_ns
        self._ended = False

    def _ns(self, at: float | None) -> int:
        return (time.monotonic_ns() if at is None else int(at * 1e9)) + self._offset_ns

    @property
    def trace_id(self) -> str | None:
        return otel_trace.format_trace_id(self._span.get_span_context().trace_id)

    @property
    def otel(self) -> otel_trace.Span:
        return self._span

    def child(self, name: str, *, at: float | None = None, **attributes: Attribute) -> Span:
        parent = otel_trace.set_span_in_context(self._span, otel_context.Context())
        start_ns = self._ns(at)
        span = self._tracer.start_span(name, context=parent, start_time=start_ns, attributes=_attributes(attributes))
        return OtelSpan(span, self._tracer, self._offset_ns)

    def set(self, **attributes: Attribute) -> None:
        if not self._ended:
            self._span.set_attributes(_attributes(attributes))

    def end(self, outcome: Outcome = "ok", *, at: float | None = None, error: str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        self._span.set_attribute(PREFIX + "outcome", outcome)
        if outcome == "error":
            self._span.set_status(Status(StatusCode.ERROR, error or "error"))
            if error:
                self._span.set_attribute(PREFIX + "error", error)
        self._span.end(end_time=self._ns(at))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        outcome, code = outcome_of(exc)
        self.end(outcome, error=code)


def _exporter(name: str, environ: Mapping[str, str]) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "memory":
        return InMemorySpanExporter()
    if name != "otlp":
        raise ConfigError(f"telemetry.exporter: unknown exporter {name!r} (otlp, console, memory)")
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise ConfigError(
                "telemetry: OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc "
                "(or use http/protobuf, the default)"
            ) from None
        return GrpcExporter()  # type: ignore[no-any-return]
    if protocol not in (None, "", "http/protobuf"):
        raise ConfigError(f"telemetry: OTLP protocol {protocol!r} is not supported (http/protobuf or grpc)")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise ConfigError(
            "telemetry: the otlp exporter needs opentelemetry-exporter-otlp-proto-http (pip install -e '.[telemetry]')"
        ) from None
    return OTLPSpanExporter()


class OtelTracer(Tracer):
    """Turn traces into the SDK: ``start`` opens a new trace; ``memory`` is the in-memory exporter (tests)."""

    __slots__ = ("_offset_ns", "_tracer", "memory", "provider")
    enabled: ClassVar[bool] = True

    def __init__(self, *, exporter: str, service_name: str, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        resource = Resource.create(
            {"service.name": service_name, "service.instance.id": env.get("VOXPIPE_WORKER") or str(os.getpid())}
        )
        self.provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER (+ _ARG)
        span_exporter = _exporter(exporter, env)
        self.memory = span_exporter if isinstance(span_exporter, InMemorySpanExporter) else None
        # memory: spans are readable as soon as they end; the others export in batches, off the event loop
        processor: Any = SimpleSpanProcessor if self.memory is not None else BatchSpanProcessor
        self.provider.add_span_processor(processor(span_exporter))
        self._tracer = self.provider.get_tracer("voxpipe")
        self._offset_ns = time.time_ns() - time.monotonic_ns()  # monotonic -> epoch, fixed at start

    def start(self, name: str, *, at: float | None = None, **attributes: Attribute) -> Span:
        start_ns = (time.monotonic_ns() if at is None else int(at * 1e9)) + self._offset_ns
        span = self._tracer.start_span(
            name, context=otel_context.Context(), start_time=start_ns, attributes=_attributes(attributes)
        )
        return OtelSpan(span, self._tracer, self._offset_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()

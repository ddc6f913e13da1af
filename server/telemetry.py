"""The ``telemetry:`` config section and the tracer it makes: the no-op one unless traces are asked for.

    telemetry:
      traces: false         # OpenTelemetry spans per turn (needs the telemetry extra)
      exporter: null        # otlp | console | memory; null: $OTEL_TRACES_EXPORTER, else otlp
      service_name: null    # null: $OTEL_SERVICE_NAME, else voxpipe
      log_transcripts: false  # per-turn log lines carry the transcript and the reply text

``OTEL_SDK_DISABLED=true`` turns traces off whatever the file says; the exporter's endpoint, headers and
the sampler come from the standard ``OTEL_*`` variables (docs/operations.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from vocab.errors import ConfigError
from vocab.options import build
from vocab.telemetry import NOOP_TRACER, Tracer

Exporter = Literal["otlp", "console", "memory", "none"]


@dataclass(frozen=True, slots=True)
class TelemetryOptions:
    traces: bool = False
    exporter: Exporter | None = None
    service_name: str | None = None
    log_transcripts: bool = False

    def validate(self) -> None:
        if self.service_name is not None and not self.service_name.strip():
            raise ConfigError("telemetry.service_name: must not be empty (or null)")


def telemetry_options(extra: dict[str, Any]) -> TelemetryOptions:
    """The options from the config's extra sections (raises ConfigError naming a bad key)."""
    options: TelemetryOptions = build(TelemetryOptions, extra.get("telemetry"), "telemetry")
    return options


def make_tracer(options: TelemetryOptions, environ: Mapping[str, str] | None = None) -> Tracer:
    """The tracer the server's sessions use: ``NOOP_TRACER`` unless traces are on and the SDK installed."""
    env = os.environ if environ is None else environ
    if not options.traces or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return NOOP_TRACER
    exporter = options.exporter or env.get("OTEL_TRACES_EXPORTER", "").split(",")[0].strip() or "otlp"
    if exporter == "none":
        return NOOP_TRACER
    try:
        from server.otel import OtelTracer
    except ImportError as exc:
        raise ConfigError(
            f"telemetry.traces: needs the OpenTelemetry SDK ({exc.name} is not installed): "
            "pip install -e '.[telemetry]'"
        ) from None
    service = options.service_name or env.get("OTEL_SERVICE_NAME") or "voxpipe"
    return OtelTracer(exporter=exporter, service_name=service, environ=env)

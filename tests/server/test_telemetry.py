"""server/telemetry.py: the ``telemetry:`` section, and which tracer it makes (off unless asked, OTEL_* honoured)."""

from __future__ import annotations

import pytest

from server.config import parse_config
from server.telemetry import TelemetryOptions, make_tracer, telemetry_options
from tests.client import test_config
from vocab.errors import ConfigError
from vocab.telemetry import NOOP_TRACER


def test_off_by_default_and_a_bad_key_is_named() -> None:
    assert telemetry_options(parse_config(test_config()).extra) == TelemetryOptions()
    assert make_tracer(TelemetryOptions(), {}) is NOOP_TRACER
    with pytest.raises(ConfigError, match=r"telemetry\.trace"):
        telemetry_options(parse_config(test_config(telemetry={"trace": True})).extra)
    with pytest.raises(ConfigError, match=r"telemetry\.exporter"):
        telemetry_options(parse_config(test_config(telemetry={"exporter": "jaeger"})).extra)


def test_the_standard_variables_pick_or_disable_the_exporter() -> None:
    pytest.importorskip("opentelemetry.sdk")
    on = TelemetryOptions(traces=True)
    assert make_tracer(on, {"OTEL_SDK_DISABLED": "true"}) is NOOP_TRACER
    assert make_tracer(on, {"OTEL_TRACES_EXPORTER": "none"}) is NOOP_TRACER
    tracer = make_tracer(on, {"OTEL_TRACES_EXPORTER": "memory"})
    try:
        assert tracer.enabled
        assert getattr(tracer, "memory", None) is not None
    finally:
        tracer.shutdown()
    with pytest.raises(ConfigError, match="grpc"):
        make_tracer(on, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})

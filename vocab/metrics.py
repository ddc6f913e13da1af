"""Process-wide counters, gauges and histograms, rendered in Prometheus text format at ``GET /metrics``.

No dependency: a metric is a name, a help line, and values keyed by a sorted tuple of labels.
Updating one is a dict operation (a histogram: a bisect too), cheap enough for per-message paths.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Literal

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metric:
    def __init__(self, name: str, help_text: str, kind: Literal["counter", "gauge"]) -> None:
        self.name = name
        self.help = help_text
        self.kind = kind
        self.values: dict[Labels, float] = {}

    @staticmethod
    def _key(labels: dict[str, str] | None) -> Labels:
        return tuple(sorted(labels.items())) if labels else ()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self.values[key] = self.values.get(key, 0.0) + amount

    def set(self, value: float, **labels: str) -> None:
        self.values[self._key(labels)] = value

    def get(self, **labels: str) -> float:
        return self.values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        if not self.values and self.kind == "counter":
            lines.append(f"{self.name} 0")
        for key, value in sorted(self.values.items()):
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
            suffix = f"{{{label_text}}}" if label_text else ""
            lines.append(f"{self.name}{suffix} {value:g}")
        return lines


def _label_text(key: Labels, extra: str = "") -> str:
    parts = [f'{k}="{_escape(v)}"' for k, v in key]
    if extra:
        parts.append(extra)
    return f"{{{','.join(parts)}}}" if parts else ""


class Histogram:
    """Observations counted into cumulative buckets (``le`` upper bounds), with their sum and count.

    Rendered as Prometheus does: ``<name>_bucket{le="..."}`` for each bound and ``+Inf``, ``<name>_sum``,
    ``<name>_count``, per label set. Bounds are in the metric's unit (seconds for ``*_seconds``).
    """

    kind: Literal["histogram"] = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or len(set(bounds)) != len(bounds):
            raise ValueError(f"{name}: buckets must be distinct and at least one")
        self.name = name
        self.help = help_text
        self.buckets = tuple(bounds)
        # per label set: a count per bucket (not cumulative; the last one is +Inf), then the sum
        self.values: dict[Labels, list[float]] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items())) if labels else ()
        row = self.values.get(key)
        if row is None:
            row = self.values[key] = [0.0] * (len(self.buckets) + 2)
        row[bisect.bisect_left(self.buckets, value)] += 1  # the first bound >= value: ``le`` is inclusive
        row[-1] += value

    def count(self, **labels: str) -> float:
        row = self.values.get(tuple(sorted(labels.items())) if labels else ())
        return 0.0 if row is None else sum(row[:-1])

    def sum(self, **labels: str) -> float:
        row = self.values.get(tuple(sorted(labels.items())) if labels else ())
        return 0.0 if row is None else row[-1]

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for key, row in sorted(self.values.items()):
            cumulative = 0.0
            for bound, n in zip([*self.buckets, float("inf")], row[:-1], strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                bucket_labels = _label_text(key, 'le="' + le + '"')
                lines.append(f"{self.name}_bucket{bucket_labels} {cumulative:g}")
            lines.append(f"{self.name}_sum{_label_text(key)} {row[-1]:.9g}")
            lines.append(f"{self.name}_count{_label_text(key)} {cumulative:g}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric | Histogram] = {}
        self._collectors: list[Callable[[], None]] = []

    def _get(self, name: str, help_text: str, kind: Literal["counter", "gauge"]) -> Metric:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = Metric(name, help_text, kind)
        assert isinstance(metric, Metric), f"{name} is registered as a histogram"
        return metric

    def histogram(self, name: str, help_text: str, buckets: Sequence[float]) -> Histogram:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = Histogram(name, help_text, buckets)
        assert isinstance(metric, Histogram), f"{name} is registered as a {metric.kind}"
        return metric

    def counter(self, name: str, help_text: str) -> Metric:
        return self._get(name, help_text, "counter")

    def gauge(self, name: str, help_text: str) -> Metric:
        return self._get(name, help_text, "gauge")

    def add_collector(self, collect: Callable[[], None]) -> None:
        """``collect`` runs before each render, to refresh gauges computed on demand."""
        self._collectors.append(collect)

    def render(self) -> str:
        for collect in self._collectors:
            collect()
        lines: list[str] = []
        for metric in self._metrics.values():
            lines += metric.render()
        return "\n".join(lines) + "\n"


METRICS = Registry()

SESSIONS_OPEN = METRICS.gauge("voxpipe_sessions_open", "WebSocket sessions open now")
SESSIONS_TOTAL = METRICS.counter("voxpipe_sessions_total", "Sessions started")
TURNS_TOTAL = METRICS.counter("voxpipe_turns_total", "Agent turns finished, by outcome (end, interrupted)")
INTERRUPTIONS_TOTAL = METRICS.counter("voxpipe_interruptions_total", "Turns cut off, by cause")
ERRORS_TOTAL = METRICS.counter("voxpipe_errors_total", "Errors sent to clients, by code")
QUEUE_DROPS_TOTAL = METRICS.counter("voxpipe_queue_drops_total", "Items dropped by a full queue, by edge")
CLOSES_TOTAL = METRICS.counter("voxpipe_closes_total", "Connections closed by the server, by close code")

# Latency histograms (seconds). Voice-to-voice: the user's last voiced frame -> the reply's first audio sent.
LATENCY_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0)
VOICE_TO_VOICE = METRICS.histogram(
    "voxpipe_voice_to_voice_seconds",
    "Turns begun from speech: the user's last voiced frame to the first audio of the reply sent",
    LATENCY_BUCKETS_S,
)
STAGE_FIRST_OUTPUT = METRICS.histogram(
    "voxpipe_stage_first_output_seconds",
    "End of the user's input to each stage's first output in a turn, by stage (name) and kind",
    (0.01, 0.025, *LATENCY_BUCKETS_S),
)
EVENT_LOOP_LAG = METRICS.histogram(
    "voxpipe_event_loop_lag_seconds",
    "How late the event loop ran a timer (sampled every 0.25 s): CPU-bound work on the loop shows here",
    (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)

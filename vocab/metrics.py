"""Process-wide counters and gauges, rendered in Prometheus text format at ``GET /metrics``.

No dependency: a metric is a name, a help line, and values keyed by a sorted tuple of labels.
Updating one is a dict operation, cheap enough for per-message paths.
"""

from __future__ import annotations

from collections.abc import Callable
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


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._collectors: list[Callable[[], None]] = []

    def _get(self, name: str, help_text: str, kind: Literal["counter", "gauge"]) -> Metric:
        metric = self._metrics.get(name)
        if metric is None:
            metric = self._metrics[name] = Metric(name, help_text, kind)
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

"""Log output: plain text or one JSON object per line (``voxpipe serve --log-format json``), and the events.

Events are the lines an operator counts and joins on: ``session_start``, ``session_end`` and ``turn``
(logger ``voxpipe.events``, level INFO). Their fields are a flat mapping; in JSON they are top-level keys
next to ``ts``, ``level``, ``logger`` and ``event``, in text they follow the event name as ``key=value``.
What goes into them is chosen by the callers (``server/turn_report.py``, ``server/app.py``): ids, counts,
times and error codes; never a token or key, and text of the conversation only with ``log_transcripts``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

LogFormat = Literal["text", "json"]
EVENTS = logging.getLogger("voxpipe.events")


def event(name: str, **fields: Any) -> None:
    """One event line (cheap when INFO is off for ``voxpipe.events``: nothing is formatted)."""
    if EVENTS.isEnabledFor(logging.INFO):
        EVENTS.info(name, extra={"voxpipe_event": name, "voxpipe_fields": fields})


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "event" | "message": ..., **fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        name = getattr(record, "voxpipe_event", None)
        if name is not None:
            out["event"] = name
            out.update(getattr(record, "voxpipe_fields", {}))
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The usual ``time logger level message``; events as ``name key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(name)s %(levelname)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # logging's name
        name = getattr(record, "voxpipe_event", None)
        if name is not None:
            fields = getattr(record, "voxpipe_fields", {})
            record.message = " ".join([name, *(f"{k}={json.dumps(v, default=str)}" for k, v in fields.items())])
        return super().formatMessage(record)


def configure(level: str | None, fmt: LogFormat) -> None:
    """Root logging for ``voxpipe serve``: stderr, in ``fmt``. WARNING by default; with JSON, voxpipe's own
    loggers at INFO (the events are INFO lines) while libraries stay at WARNING; ``level`` sets all."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel((level or "WARNING").upper())
    if not level and fmt == "json":
        logging.getLogger("voxpipe").setLevel(logging.INFO)  # voxpipe's own lines; libraries stay at WARNING

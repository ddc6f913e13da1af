"""``config.yaml``: the server's limits, the session defaults and the stage pipeline, validated at start.

Every limit has a unit in its name and a safe default; ``None`` (YAML ``null``) turns a limit off
where that makes sense. ``load_config`` raises ``ConfigError`` naming the bad key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from server.auth import AuthOptions
from transports.limits import LimitOptions
from vocab.errors import ConfigError
from vocab.options import build, require


@dataclass(frozen=True, slots=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    ws_path: str = "/ws"
    max_frame_bytes: int = 1 << 20  # bigger frames close the socket with 1009
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0
    open_timeout_s: float | None = 10.0  # TCP accept -> WebSocket handshake done
    close_timeout_s: float | None = 5.0
    hello_timeout_s: float = 5.0  # handshake done -> hello received (a client sends it at once)
    write_limit_bytes: int = 64 * 1024  # websockets' write buffer high-water mark
    max_queue_frames: int = 4  # websockets' incoming frame queue: 4 x max_frame_bytes worst case per connection
    max_sessions: int = 200  # sessions (after hello); connections still waiting for theirs do not count
    max_pending_hellos: int = 64  # connections waiting for their hello; more get HTTP 503 at the handshake
    drain_timeout_s: float = 10.0  # SIGTERM: how long current turns may finish
    web_root: str | None = None  # folder served at GET /; default: clients/web next to the code
    # Host header names the HTTP routes and the WebSocket answer (others: 403), against DNS rebinding; entries
    # are names or "*.example.com"; IP literals always pass. null: none checked on loopback, this machine's
    # names (localhost, hostname, FQDN) when bound beyond it. ["*"]: no check.
    allowed_hosts: list[str] | None = None
    # GET /metrics needs "Authorization: Bearer <token>" when set: the token comes from this environment
    # variable (a missing or empty variable is a start-up error). null: /metrics is open (restrict it at a proxy).
    metrics_token_env: str | None = None

    def validate(self) -> None:
        require(0 <= self.port <= 65535, "port", "must be 0..65535")
        require(self.ws_path.startswith("/"), "ws_path", "must start with '/'")
        require(self.max_frame_bytes >= 1024, "max_frame_bytes", "must be at least 1024")
        require(self.max_sessions >= 1, "max_sessions", "must be at least 1")
        require(self.max_pending_hellos >= 1, "max_pending_hellos", "must be at least 1")
        require(self.hello_timeout_s > 0, "hello_timeout_s", "must be > 0")


@dataclass(frozen=True, slots=True)
class SessionDefaults:
    system_prompt: str = "You are a helpful assistant. Reply in one short sentence."
    voice: str | None = None
    language: str | None = "en"
    lead_ms: float = 200.0  # how far audio may run ahead of real-time playback
    barge_in_min_ms: float = 250.0  # sustained voiced time that interrupts the agent
    audio_in_queue_ms: float = 2000.0  # raw audio buffered before the first stage; oldest dropped
    stage_queue_items: int = 64  # every other edge; a full queue blocks its producer
    outbox_max_items: int = 512  # messages waiting for the socket; a full outbox blocks the stages
    max_history_messages: int = 40

    def validate(self) -> None:
        require(self.lead_ms >= 0, "lead_ms", "must be >= 0")
        require(self.barge_in_min_ms >= 0, "barge_in_min_ms", "must be >= 0")
        require(self.audio_in_queue_ms >= 100, "audio_in_queue_ms", "must be >= 100")
        require(self.stage_queue_items >= 1, "stage_queue_items", "must be >= 1")
        require(self.outbox_max_items >= 16, "outbox_max_items", "must be >= 16")
        require(self.max_history_messages >= 0, "max_history_messages", "must be >= 0")


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerOptions = field(default_factory=ServerOptions)
    session: SessionDefaults = field(default_factory=SessionDefaults)
    # Raw stage entries; ``stages.registry.build_pipeline`` validates them against each engine.
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    auth: AuthOptions = field(default_factory=AuthOptions)  # server/auth.py
    limits: LimitOptions = field(default_factory=LimitOptions)  # server/limits.py
    # Sections owned and validated by their modules: webrtc (transports/webrtc.py), echo_guard (server/echo_guard.py).
    extra: dict[str, Any] = field(default_factory=dict)


KNOWN_SECTIONS = ("server", "session", "pipeline", "auth", "limits")
EXTRA_SECTIONS = ("webrtc", "echo_guard")


def parse_config(data: Any, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    for key in data:
        if key not in KNOWN_SECTIONS and key not in EXTRA_SECTIONS:
            known = ", ".join(KNOWN_SECTIONS + EXTRA_SECTIONS)
            raise ConfigError(f"{key}: unknown section (known sections: {known})")
    pipeline = data.get("pipeline")
    if not isinstance(pipeline, list) or not pipeline:
        raise ConfigError("pipeline: must be a non-empty list of stages")
    for i, entry in enumerate(pipeline):
        if not isinstance(entry, dict):
            raise ConfigError(f"pipeline[{i}]: must be a mapping with at least 'engine'")
    return Config(
        server=build(ServerOptions, data.get("server"), "server"),
        session=build(SessionDefaults, data.get("session"), "session"),
        pipeline=pipeline,
        auth=build(AuthOptions, data.get("auth"), "auth"),
        limits=build(LimitOptions, data.get("limits"), "limits"),
        extra={k: data[k] for k in EXTRA_SECTIONS if k in data},
    )


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))

"""``config.yaml``: the server's limits, the session defaults and the stage pipeline, validated at start.

Every limit has a unit in its name and a safe default; ``None`` (YAML ``null``) turns a limit off
where that makes sense. ``load_config`` raises ``ConfigError`` naming the bad key.

Any key can be set from the environment too (containers are configured that way):
``VOXPIPE_SERVER__PORT=9000``, ``VOXPIPE_STATE__BACKEND=redis``, ``VOXPIPE_PIPELINE__2__MAX_TOKENS=32``
(sections and keys joined by ``__``, list entries by index; values read as YAML scalars). Overrides are
validated with the file, and an error names the variable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from server.auth import AuthOptions
from server.state import StateOptions
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


# Words that acknowledge without taking the floor; matched whole, case and punctuation aside.
BACKCHANNELS = (
    "yeah", "yes", "yep", "yup", "uh huh", "mm hmm", "mhm", "mm", "hmm", "okay", "ok", "right", "sure",
    "i see", "got it", "oh", "ah", "wow", "cool", "nice", "alright", "all right", "true", "exactly",
    "ha", "haha", "ha ha", "hahaha", "heh", "hehe",  # laughter, as Whisper writes it
    "mmm", "mm mm", "hm", "uh", "um", "er",  # Whisper's "mm-hmm"s, and hesitations with no words yet
    # an acknowledgement, not a bid for the floor; and what Whisper hears most in an echo's residue or noise
    # (bench/turn_taking.py --only echo, RT60 600 ms: most echo barge-ins and echo turns answered)
    "thank you", "thanks",
)


@dataclass(frozen=True, slots=True)
class SessionDefaults:
    system_prompt: str = "You are a helpful assistant. Reply in one short sentence."
    voice: str | None = None
    language: str | None = "en"
    lead_ms: float = 200.0  # how far audio may run ahead of real-time playback
    barge_in_min_ms: float = 250.0  # sustained voiced time that interrupts the agent (barge_in: immediate)
    # voice over the agent: "words" pauses it and lets the words decide; "immediate" cuts it at barge_in_min_ms
    barge_in: Literal["immediate", "words"] = "words"
    backchannels: list[str] = field(default_factory=lambda: list(BACKCHANNELS))
    barge_in_window_ms: float = 400.0  # the words should decide this soon after the voice began
    barge_in_max_pause_ms: float = 2500.0  # still talking this long after the pause began: it is an interruption
    audio_in_queue_ms: float = 2000.0  # raw audio buffered before the first stage; oldest dropped
    stage_queue_items: int = 64  # every other edge; a full queue blocks its producer
    outbox_max_items: int = 512  # messages waiting for the socket; a full outbox blocks the stages
    max_history_messages: int = 40
    # resume after a dropped socket (wire contract, "Resume")
    resume_grace_s: float | None = 30.0  # a dropped session is held this long for a resume; null: resume off
    replay_max_messages: int = 512  # messages other than audio kept for a resume to replay
    resume_secret_env: str = "VOXPIPE_RESUME_SECRET"  # HMAC key every worker shares (unset: one per process)
    resume_token_ttl_s: float | None = None  # default: limits.max_session_s + resume_grace_s (24 h when off)

    def validate(self) -> None:
        require(self.lead_ms >= 0, "lead_ms", "must be >= 0")
        require(self.barge_in_min_ms >= 0, "barge_in_min_ms", "must be >= 0")
        require(50 <= self.barge_in_window_ms <= 2000, "barge_in_window_ms", "must be 50..2000")
        longest_ok = self.barge_in_max_pause_ms >= self.barge_in_window_ms
        require(longest_ok, "barge_in_max_pause_ms", "must be >= barge_in_window_ms")
        require(self.audio_in_queue_ms >= 100, "audio_in_queue_ms", "must be >= 100")
        require(self.stage_queue_items >= 1, "stage_queue_items", "must be >= 1")
        require(self.outbox_max_items >= 16, "outbox_max_items", "must be >= 16")
        require(self.max_history_messages >= 0, "max_history_messages", "must be >= 0")
        require(self.resume_grace_s is None or self.resume_grace_s > 0, "resume_grace_s", "must be > 0 (or null: off)")
        require(self.replay_max_messages >= 16, "replay_max_messages", "must be >= 16")
        require(
            self.resume_token_ttl_s is None or self.resume_token_ttl_s > 0, "resume_token_ttl_s", "must be > 0"
        )


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerOptions = field(default_factory=ServerOptions)
    session: SessionDefaults = field(default_factory=SessionDefaults)
    # Raw stage entries; ``stages.registry.build_pipeline`` validates them against each engine.
    pipeline: list[dict[str, Any]] = field(default_factory=list)
    auth: AuthOptions = field(default_factory=AuthOptions)  # server/auth.py
    limits: LimitOptions = field(default_factory=LimitOptions)  # transports/limits.py
    state: StateOptions = field(default_factory=StateOptions)  # server/state.py
    # Sections owned and validated by their modules: webrtc (transports/webrtc.py), echo_guard
    # (server/echo_guard.py), echo_canceller (server/aec.py), realtime (transports/realtime.py, wired by
    # server/realtime_endpoint.py), telemetry (server/telemetry.py).
    extra: dict[str, Any] = field(default_factory=dict)


KNOWN_SECTIONS = ("server", "session", "pipeline", "auth", "limits", "state")
EXTRA_SECTIONS = ("webrtc", "echo_guard", "echo_canceller", "realtime", "telemetry")


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
        state=build(StateOptions, data.get("state"), "state"),
        extra={k: data[k] for k in EXTRA_SECTIONS if k in data},
    )


ENV_PREFIX = "VOXPIPE_"
_ENV_NAME = re.compile(r"^VOXPIPE_[A-Z0-9_]+__[A-Z0-9_]+$")


def apply_env(data: Any, environ: Mapping[str, str]) -> tuple[Any, dict[str, str]]:
    """``data`` with every ``VOXPIPE_A__B__C`` variable set at ``a.b.c``; and key path -> variable name."""
    if data is None:
        data = {}
    sources: dict[str, str] = {}
    for name in sorted(environ):
        if not _ENV_NAME.match(name):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not isinstance(data, dict) or not all(parts):
            raise ConfigError(f"${name}: not a config key (VOXPIPE_SECTION__KEY)")
        try:
            value = yaml.safe_load(environ[name])
        except yaml.YAMLError:
            value = environ[name]
        node: Any = data
        path = parts[0]
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{path}: no entry {part} to set from ${name}")
                key: Any = int(part)
            elif isinstance(node, dict):
                key = part
            else:
                raise ConfigError(f"{path}: not a section, cannot set {part} from ${name}")
            if last:
                node[key] = value
            else:
                if isinstance(node, dict) and node.get(key) is None:
                    node[key] = {}
                node = node[key]
                path += f"[{parts[i + 1]}]" if isinstance(node, list) else f".{parts[i + 1]}"
        sources[path] = name
    return data, sources


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """The file at ``path`` with the environment's overrides, validated; ``ConfigError`` names the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    data, sources = apply_env(data, os.environ if environ is None else environ)
    try:
        return parse_config(data, str(path))
    except ConfigError as exc:
        head = exc.message.split(":", 1)[0]  # the key the error names
        for key, name in sources.items():
            if head == key or head.startswith((key + ".", key + "[")) or key.startswith((head + ".", head + "[")):
                raise ConfigError(f"{exc.message} (set by ${name})") from None
        raise

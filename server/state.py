"""Conversation state that outlives a socket and a worker: the snapshot, and where it is kept.

A ``SessionState`` is what a resume needs (history, settings, the replay tail, the turn and message
counters), bounded in size by the history and log bounds. It is written at each turn end and when the
socket drops, with a TTL, to a ``StateStore``: ``MemoryStore`` (one process, the default) or
``RedisStore`` (config ``state.backend: redis``), so a resume can land on any worker.
A store that fails is logged and the conversation goes on; only resume is lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import msgpack

from vocab.errors import ConfigError
from vocab.metrics import METRICS
from vocab.options import require

log = logging.getLogger("voxpipe.state")
STATE_ERRORS_TOTAL = METRICS.counter("voxpipe_state_errors_total", "Session state store failures, by operation")
STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class StateOptions:
    """The ``state`` section of config.yaml."""

    backend: Literal["memory", "redis"] = "memory"
    url_env: str = "VOXPIPE_REDIS_URL"  # redis://host:6379/0, from this environment variable
    key_prefix: str = "voxpipe:"
    timeout_s: float = 1.0  # per store call; a slower store is treated as down for that call
    max_memory_sessions: int = 10_000  # memory backend: snapshots kept (the oldest go first)

    def validate(self) -> None:
        require(self.timeout_s > 0, "timeout_s", "must be > 0")
        require(self.max_memory_sessions >= 1, "max_memory_sessions", "must be >= 1")
        require(bool(self.url_env.strip()), "url_env", "must name an environment variable")


@dataclass(frozen=True, slots=True)
class SessionState:
    """One conversation, as a resume restores it."""

    session: str
    user: str | None
    system_prompt: str
    voice: str | None
    language: str | None
    history: list[tuple[int, str, str]]  # (turn, role, content)
    last_turn: int
    last_seq: int
    replay: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (session_seq, message map)
    forgotten_seq: int = 0
    saved_at: float = 0.0  # wall clock

    def pack(self) -> bytes:
        return msgpack.packb({"v": STATE_VERSION, **asdict(self)}, use_bin_type=True)

    @classmethod
    def unpack(cls, blob: bytes) -> SessionState:
        data = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        if data.pop("v", None) != STATE_VERSION:
            raise ValueError("unknown session state version")
        data["history"] = [tuple(h) for h in data["history"]]
        data["replay"] = [(int(n), dict(msg)) for n, msg in data["replay"]]
        return cls(**data)


class StateStore(Protocol):
    async def save(self, state: SessionState, *, ttl_s: float) -> None: ...

    async def load(self, session: str) -> SessionState | None: ...

    async def delete(self, session: str) -> None: ...

    async def aclose(self) -> None: ...


class MemoryStore:
    """Snapshots in this process (resume on the same worker only), expired on read, bounded in count."""

    def __init__(self, *, max_sessions: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_sessions = max_sessions
        self.clock = clock
        self._states: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    async def save(self, state: SessionState, *, ttl_s: float) -> None:
        self._states[state.session] = (self.clock() + ttl_s, state.pack())
        self._states.move_to_end(state.session)
        while len(self._states) > self.max_sessions:
            self._states.popitem(last=False)

    async def load(self, session: str) -> SessionState | None:
        entry = self._states.get(session)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._states[session]
            return None
        return SessionState.unpack(entry[1])

    async def delete(self, session: str) -> None:
        self._states.pop(session, None)

    async def aclose(self) -> None:
        self._states.clear()


class RedisStore:
    """Snapshots in Redis (``SET key blob PX ttl``), shared by every worker that points at it."""

    def __init__(self, url: str, *, key_prefix: str, timeout_s: float) -> None:
        import redis.asyncio

        self.prefix = key_prefix
        self.client = redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30
        )

    def _key(self, session: str) -> str:
        return f"{self.prefix}session:{session}"

    async def save(self, state: SessionState, *, ttl_s: float) -> None:
        await self.client.set(self._key(state.session), state.pack(), px=max(1, int(ttl_s * 1000)))

    async def load(self, session: str) -> SessionState | None:
        blob = await self.client.get(self._key(session))
        if blob is None:
            return None
        if not isinstance(blob, bytes):
            raise ValueError("the stored session state is not bytes")
        return SessionState.unpack(blob)

    async def delete(self, session: str) -> None:
        await self.client.delete(self._key(session))

    async def aclose(self) -> None:
        await self.client.aclose()


def make_store(options: StateOptions, environ: dict[str, str] | None = None) -> StateStore:
    """The configured store; a Redis URL missing from the environment is a start-up error naming the key."""
    if options.backend == "memory":
        return MemoryStore(max_sessions=options.max_memory_sessions)
    url = (os.environ if environ is None else environ).get(options.url_env, "")
    if not url:
        raise ConfigError(f"state.url_env: environment variable {options.url_env} is not set (state.backend: redis)")
    return RedisStore(url, key_prefix=options.key_prefix, timeout_s=options.timeout_s)


class SafeStore:
    """A store whose failures (or calls slower than ``timeout_s``) are logged and counted, never raised:
    resume is lost, not the conversation."""

    def __init__(self, store: StateStore, *, timeout_s: float) -> None:
        self.store = store
        self.timeout_s = timeout_s

    async def _call(self, what: str, session: str, call: Awaitable[Any]) -> tuple[bool, Any]:
        try:
            async with asyncio.timeout(self.timeout_s):
                return True, await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            STATE_ERRORS_TOTAL.inc(op=what)
            log.warning("session %s: state %s failed: %r", session, what, exc)
            return False, None

    async def save(self, state: SessionState, *, ttl_s: float) -> bool:
        ok, _ = await self._call("save", state.session, self.store.save(state, ttl_s=ttl_s))
        return ok

    async def load(self, session: str) -> tuple[SessionState | None, bool]:
        """The snapshot (None: none kept), and whether the store answered."""
        ok, found = await self._call("load", session, self.store.load(session))
        return found, ok

    async def delete(self, session: str) -> None:
        await self._call("delete", session, self.store.delete(session))

    async def aclose(self) -> None:
        await self._call("close", "-", self.store.aclose())

"""The endpoints of one upstream backend: balancing strategy, per-endpoint concurrency cap, a bounded wait
line, and a circuit breaker per endpoint; per-endpoint figures go to ``vocab.metrics.METRICS``.

No I/O here: ``stages.upstream`` asks the pool for an endpoint (``acquire``), makes the request, and
reports how it went (``release``). The clock is ``time.monotonic`` unless a test passes another.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from vocab.errors import UpstreamError
from vocab.metrics import METRICS

Strategy = Literal["round_robin", "weighted", "least_connections", "random"]
Outcome = Literal["success", "failure", "neutral"]

UPSTREAM_REQUESTS = METRICS.counter("voxpipe_upstream_requests_total", "Requests sent to upstream endpoints")
UPSTREAM_FAILURES = METRICS.counter(
    "voxpipe_upstream_failures_total", "Failed upstream requests, by endpoint and error code"
)
UPSTREAM_LATENCY_SUM = METRICS.counter(
    "voxpipe_upstream_first_byte_seconds_sum", "Sum of request-to-first-byte times, per endpoint"
)
UPSTREAM_LATENCY_COUNT = METRICS.counter(
    "voxpipe_upstream_first_byte_seconds_count", "Requests that got a first byte, per endpoint"
)
UPSTREAM_BREAKER = METRICS.gauge(
    "voxpipe_upstream_breaker_state", "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open"
)
UPSTREAM_IN_FLIGHT = METRICS.gauge("voxpipe_upstream_in_flight", "Requests in flight per endpoint")
UPSTREAM_REJECTED = METRICS.counter(
    "voxpipe_upstream_rejected_total", "Calls refused before any request: busy (wait line full) or all open"
)

BREAKER_VALUES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


def redact(url: str) -> str:
    """``url`` without the credentials some put in it (``http://user:pw@host`` -> ``http://***@host``)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


@dataclass(frozen=True, slots=True)
class PoolLimits:
    strategy: Strategy
    max_concurrency: int
    max_waiting: int
    breaker_failures: int
    breaker_cooldown_s: float


class EndpointState:
    """One endpoint's live state: requests in flight and its circuit breaker.

    Breaker: ``closed`` counts consecutive failures and opens at ``breaker_failures``; ``open`` is
    skipped until ``breaker_cooldown_s`` has passed, then lets exactly one probe through
    (``half_open``): its success closes the breaker, its failure opens it for another cool-down.
    """

    def __init__(self, index: int, url: str, weight: float, api_key_env: str | None, labels: dict[str, str]):
        self.index = index
        self.url = url
        self.name = redact(url)  # for labels and messages: no user:password@
        self.weight = weight
        self.api_key_env = api_key_env
        self.labels = labels
        self.in_flight = 0
        self.state: Literal["closed", "half_open", "open"] = "closed"
        self.failures = 0  # consecutive
        self.opened_at = 0.0
        self.probing = False  # the half-open probe is in flight
        self.current_weight = 0.0  # smooth weighted round robin
        UPSTREAM_BREAKER.set(0.0, **labels)
        UPSTREAM_IN_FLIGHT.set(0.0, **labels)

    def __repr__(self) -> str:
        return f"<endpoint {self.name} {self.state} in_flight={self.in_flight}>"

    def _set_state(self, state: Literal["closed", "half_open", "open"]) -> None:
        self.state = state
        UPSTREAM_BREAKER.set(BREAKER_VALUES[state], **self.labels)


class EndpointPool:
    """Picks an endpoint per request; ``acquire`` waits in a bounded line when every healthy one is full.

    Cancellation-safe: a caller cancelled while waiting leaves the line and takes no slot.
    """

    def __init__(
        self,
        endpoints: Sequence[tuple[str, float, str | None]],
        limits: PoolLimits,
        *,
        backend: str,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.limits = limits
        self.backend = backend
        self.clock = clock
        self.rng = rng or random.Random()
        self.endpoints = [
            EndpointState(i, url, weight, key_env, {"backend": backend, "endpoint": redact(url)})
            for i, (url, weight, key_env) in enumerate(endpoints)
        ]
        self._cursor = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    # ------------------------------------------------------------ breaker

    def _refresh(self, ep: EndpointState) -> None:
        if ep.state == "open" and self.clock() - ep.opened_at >= self.limits.breaker_cooldown_s:
            ep._set_state("half_open")
            ep.probing = False

    def _usable(self, ep: EndpointState) -> bool:
        if ep.state == "open":
            return False
        if ep.state == "half_open":
            return not ep.probing
        return ep.in_flight < self.limits.max_concurrency

    def _alive(self, ep: EndpointState) -> bool:
        """Not open (it may be full, or its half-open probe may be in flight)."""
        return ep.state != "open"

    # ------------------------------------------------------------ choosing

    def _choose(self, candidates: list[EndpointState]) -> EndpointState:
        # A half-open endpoint due for its probe goes first, so a recovered service is noticed.
        for ep in candidates:
            if ep.state == "half_open":
                return ep
        strategy = self.limits.strategy
        if len(candidates) == 1:
            chosen = candidates[0]
        elif strategy == "round_robin":
            n = len(self.endpoints)
            chosen = min(candidates, key=lambda ep: (ep.index - self._cursor) % n)
        elif strategy == "weighted":  # smooth weighted round robin (as nginx): even spread, exact ratios
            total = sum(ep.weight for ep in candidates)
            for ep in candidates:
                ep.current_weight += ep.weight
            chosen = max(candidates, key=lambda ep: ep.current_weight)
            chosen.current_weight -= total
        elif strategy == "least_connections":
            n = len(self.endpoints)
            chosen = min(candidates, key=lambda ep: (ep.in_flight / ep.weight, (ep.index - self._cursor) % n))
        else:
            chosen = self.rng.choices(candidates, weights=[ep.weight for ep in candidates])[0]
        self._cursor = (chosen.index + 1) % len(self.endpoints)
        return chosen

    def _pick(self, avoid: set[int]) -> EndpointState | None:
        for ep in self.endpoints:
            self._refresh(ep)
        usable = [ep for ep in self.endpoints if self._usable(ep)]
        fresh = [ep for ep in usable if ep.index not in avoid]
        if not (fresh or usable):
            return None
        ep = self._choose(fresh or usable)
        ep.in_flight += 1
        if ep.state == "half_open":
            ep.probing = True
        UPSTREAM_IN_FLIGHT.set(float(ep.in_flight), **ep.labels)
        return ep

    async def acquire(self, avoid: set[int] | None = None) -> EndpointState:
        """An endpoint with a free slot, preferring ones not in ``avoid`` (indexes already tried).

        Raises ``UpstreamError('upstream_unavailable')`` at once when every breaker is open, and
        ``UpstreamError('upstream_busy')`` at once when every healthy endpoint is full and the wait
        line holds ``max_waiting`` callers already. Callers bound the wait with a timeout.
        """
        avoid = avoid or set()
        while True:
            ep = self._pick(avoid)
            if ep is not None:
                return ep
            if not any(self._alive(e) for e in self.endpoints):
                UPSTREAM_REJECTED.inc(backend=self.backend, code="upstream_unavailable")
                raise UpstreamError(
                    f"{self.backend}: every endpoint's circuit breaker is open "
                    f"(next probe in {self._next_probe_s():.1f} s)",
                    code="upstream_unavailable",
                )
            if len(self._waiters) >= self.limits.max_waiting:
                UPSTREAM_REJECTED.inc(backend=self.backend, code="upstream_busy")
                raise UpstreamError(
                    f"{self.backend}: every endpoint is at max_concurrency={self.limits.max_concurrency} "
                    f"and {len(self._waiters)} calls are waiting (max_waiting)",
                    code="upstream_busy",
                )
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # we were woken for a slot we will not take: pass it on
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    @property
    def waiting(self) -> int:
        """Callers waiting in line for a slot now."""
        return len(self._waiters)

    def _next_probe_s(self) -> float:
        now = self.clock()
        opened = [ep.opened_at + self.limits.breaker_cooldown_s - now for ep in self.endpoints if ep.state == "open"]
        return max(0.0, min(opened)) if opened else 0.0

    def _wake_one(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return

    # ------------------------------------------------------------ outcomes

    def release(self, ep: EndpointState, outcome: Outcome, *, code: str | None = None) -> None:
        """Give the slot back. ``failure`` counts toward the breaker; ``neutral`` (cancelled, or a
        client-side error such as HTTP 400) leaves it as it was, except that a probe may run again."""
        ep.in_flight -= 1
        UPSTREAM_IN_FLIGHT.set(float(ep.in_flight), **ep.labels)
        was_probe = ep.state == "half_open" and ep.probing
        if outcome == "success":
            ep.failures = 0
            if ep.state != "closed":
                ep._set_state("closed")
            ep.probing = False
        elif outcome == "failure":
            UPSTREAM_FAILURES.inc(1.0, code=code or "upstream_unavailable", **ep.labels)
            ep.failures += 1
            if was_probe or (ep.state == "closed" and ep.failures >= self.limits.breaker_failures):
                ep._set_state("open")
                ep.opened_at = self.clock()
                ep.probing = False
        else:
            if code:
                UPSTREAM_FAILURES.inc(1.0, code=code, **ep.labels)
            if was_probe:
                ep.probing = False
        self._wake_one()

    def snapshot(self) -> list[dict[str, object]]:
        """State of each endpoint (tests, logs)."""
        for ep in self.endpoints:
            self._refresh(ep)
        return [
            {"url": ep.name, "state": ep.state, "in_flight": ep.in_flight, "failures": ep.failures}
            for ep in self.endpoints
        ]

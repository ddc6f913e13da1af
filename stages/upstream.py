"""Calling model services over HTTP, resiliently: the options every HTTP backend shares, one pooled
``httpx.AsyncClient`` per process (per event loop and timeout settings), and ``Upstream.stream``, which
picks an endpoint, retries with backoff and jitter (only until the first item was handed on, and only when
the request cannot have been acted on unless the call is idempotent), and maps every failure to an
``UpstreamError`` code (``upstream_unavailable|timeout|busy|bad_response``).

Balancing, concurrency caps and circuit breakers live in ``stages.upstream_pool``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from stages.upstream_pool import (
    UPSTREAM_LATENCY_COUNT,
    UPSTREAM_LATENCY_SUM,
    UPSTREAM_REQUESTS,
    EndpointPool,
    EndpointState,
    Outcome,
    PoolLimits,
    Strategy,
    redact,
)
from vocab.errors import ConfigError, UpstreamError
from vocab.options import require
from vocab.telemetry import NOOP_SPAN, current_span

log = logging.getLogger("voxpipe.upstream")
T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 425})  # and every 5xx; 429 is retried too, as busy
# Statuses that say the service did not act on the request (it timed out waiting for it, it is overloaded,
# it rate-limits): retried even for a call that is not idempotent. A 500, 502 or 504 may come after it acted.
UNPROCESSED_STATUS = frozenset({408, 425, 429, 503})
ERROR_BODY_BYTES = 4096  # read of an error response's body (its first 300 bytes go to the log)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One service instance. ``url`` is its base (``http://10.0.0.5:8000``); the backend adds the path."""

    url: str
    weight: float = 1.0
    api_key_env: str | None = None  # name of the environment variable holding its API key

    def validate(self) -> None:
        require(self.url.startswith(("http://", "https://")), "url", "must start with http:// or https://")
        require(self.weight > 0, "weight", "must be > 0")
        require(self.api_key_env is None or bool(self.api_key_env.strip()), "api_key_env", "must not be empty")


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpOptions:
    """Options every HTTP backend takes (flat in its pipeline entry); the backends add their own."""

    url: str | None = None  # shorthand for one endpoint
    endpoints: list[Endpoint] = field(default_factory=list)
    api_key_env: str | None = None  # default for endpoints that name none; the key itself never goes in config
    strategy: Strategy = "round_robin"
    max_concurrency: int = 8  # requests in flight per endpoint
    max_waiting: int = 32  # calls waiting for a slot (all endpoints); beyond it: upstream_busy at once
    retries: int = 2  # extra attempts, before the first byte was handed on (see HttpCall.idempotent)
    backoff_ms: float = 100.0  # before retrying the same endpoint: backoff_ms * 2^n, jittered
    backoff_max_ms: float = 2000.0
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0  # longest silence between bytes (first byte included)
    total_timeout_s: float | None = 120.0  # upstream time per call, retries included; null: no limit
    breaker_failures: int = 3  # consecutive failures that open an endpoint's breaker
    breaker_cooldown_s: float = 10.0  # open -> one half-open probe after this long

    def validate(self) -> None:
        require(not (self.url and self.endpoints), "url", "give either url or endpoints, not both")
        require(bool(self.url or self.endpoints), "endpoints", "at least one endpoint is needed (or url)")
        if self.url:
            require(self.url.startswith(("http://", "https://")), "url", "must start with http:// or https://")
        require(self.api_key_env is None or bool(self.api_key_env.strip()), "api_key_env", "must not be empty")
        require(self.max_concurrency >= 1, "max_concurrency", "must be >= 1")
        require(self.max_waiting >= 0, "max_waiting", "must be >= 0")
        require(0 <= self.retries <= 10, "retries", "must be 0..10")
        require(self.backoff_ms >= 0, "backoff_ms", "must be >= 0")
        require(self.backoff_max_ms >= self.backoff_ms, "backoff_max_ms", "must be >= backoff_ms")
        require(self.connect_timeout_s > 0, "connect_timeout_s", "must be > 0")
        require(self.read_timeout_s > 0, "read_timeout_s", "must be > 0")
        require(self.total_timeout_s is None or self.total_timeout_s > 0, "total_timeout_s", "must be > 0 or null")
        require(self.breaker_failures >= 1, "breaker_failures", "must be >= 1")
        require(self.breaker_cooldown_s >= 0, "breaker_cooldown_s", "must be >= 0")

    def endpoint_list(self) -> list[Endpoint]:
        if self.url:
            return [Endpoint(self.url, 1.0, self.api_key_env)]
        return [Endpoint(e.url, e.weight, e.api_key_env or self.api_key_env) for e in self.endpoints]


def join_url(base: str, path: str) -> str:
    """``base`` + ``path``; a base that already ends in ``/v1`` does not get a second ``/v1``."""
    base = base.rstrip("/")
    if path.startswith("/v1/") and base.endswith("/v1"):
        path = path[3:]
    return base + (path if path.startswith("/") else "/" + path)


# ------------------------------------------------------------------ shared clients

_ClientKey = tuple[float, float]
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_ClientKey, tuple[httpx.AsyncClient, int]]] = (
    weakref.WeakKeyDictionary()
)


def _acquire_client(connect_s: float, read_s: float) -> httpx.AsyncClient:
    """The process's pooled client for these timeouts in the running loop (connections belong to a loop)."""
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    key = (connect_s, read_s)
    entry = per_loop.get(key)
    if entry is None or entry[0].is_closed:
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_s, read=read_s, write=read_s, pool=connect_s),
            # Concurrency is capped per endpoint by the pool; httpx only keeps connections warm.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=30.0),
            follow_redirects=False,
        )
        entry = (client, 0)
    per_loop[key] = (entry[0], entry[1] + 1)
    return entry[0]


async def _release_client(client: httpx.AsyncClient) -> None:
    for per_loop in list(_clients.values()):
        for key, (c, users) in list(per_loop.items()):
            if c is client:
                if users <= 1:
                    del per_loop[key]
                    await client.aclose()
                else:
                    per_loop[key] = (c, users - 1)
                return


def shared_client_count() -> int:
    """Open shared clients in the running loop (tests check that backends share and release them)."""
    return len(_clients.get(asyncio.get_running_loop(), {}))


# ------------------------------------------------------------------ requests


@dataclass(frozen=True, slots=True)
class HttpCall:
    """One logical request; sent to whichever endpoint the pool picks (``path`` joins its url).

    ``idempotent``: the backend says that doing the call twice does no harm (a chat completion, a
    transcription, a synthesis), so any failure before the first item was handed on is retried. Otherwise
    (a Dify app whose agent runs tools, and which starts a conversation) only a failure that proves the
    request was not acted on is: a refused connection, a connect timeout, 408/425/429/503.
    """

    method: str
    path: str
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    idempotent: bool = False


class _AttemptFailed(Exception):
    """One attempt failed: its client-facing code, whether another attempt may help, whether the service
    cannot have acted on the request (``unprocessed``), breaker verdict."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool,
        outcome: Outcome,
        retry_after_s: float = 0.0,
        unprocessed: bool = False,
    ):
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.outcome = outcome
        self.retry_after_s = retry_after_s
        self.unprocessed = unprocessed


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "0")))
    except ValueError:
        return 0.0


async def _error_body(response: httpx.Response) -> str:
    """The start of an error response's body, for the log: at most ``ERROR_BODY_BYTES`` are read (a broken
    proxy's error page may never end); the rest is dropped with the connection."""
    head = bytearray()
    try:
        async for piece in response.aiter_bytes():
            head += piece
            if len(head) >= ERROR_BODY_BYTES:
                break
    except httpx.HTTPError:
        pass
    return bytes(head[:300]).decode("utf-8", "replace").strip()


async def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    body = await _error_body(response)
    message = f"{url}: HTTP {status}" + (f": {body}" if body else "")
    unprocessed = status in UNPROCESSED_STATUS
    if status == 429:
        raise _AttemptFailed(
            "upstream_busy",
            message,
            retryable=True,
            outcome="neutral",
            retry_after_s=_retry_after(response),
            unprocessed=True,
        )
    if status in RETRYABLE_STATUS or status >= 500:
        raise _AttemptFailed(
            "upstream_unavailable",
            message,
            retryable=True,
            outcome="failure",
            retry_after_s=_retry_after(response),
            unprocessed=unprocessed,
        )
    # 4xx: the request is wrong (bad model name, bad key); another endpoint will say the same.
    raise _AttemptFailed("upstream_bad_response", message, retryable=False, outcome="neutral")


def _classify(exc: Exception, url: str) -> _AttemptFailed:
    if isinstance(exc, _AttemptFailed):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        unsent = isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)  # no connection: nothing was sent
        what = "connect" if unsent else "read"
        return _AttemptFailed(
            "upstream_timeout", f"{url}: {what} timeout", retryable=True, outcome="failure", unprocessed=unsent
        )
    if isinstance(exc, httpx.ConnectError):
        return _AttemptFailed(
            "upstream_unavailable",
            f"{url}: cannot connect ({exc})",
            retryable=True,
            outcome="failure",
            unprocessed=True,
        )
    if isinstance(exc, httpx.HTTPError):  # connection dropped mid-body, protocol violations
        return _AttemptFailed(
            "upstream_unavailable",
            f"{url}: connection lost ({type(exc).__name__}: {exc})",
            retryable=True,
            outcome="failure",
        )
    if isinstance(exc, UpstreamError):  # raised by a parser: malformed body, an error event
        return _AttemptFailed(exc.code, f"{url}: {exc.message}", retryable=True, outcome="failure")
    raise exc


class Upstream:
    """One backend's endpoints and client. ``stream`` is the only call; backends give it a parser."""

    def __init__(self, options: HttpOptions, *, backend: str, clock: Callable[[], float] = time.monotonic):
        self.options = options
        self.backend = backend
        self.endpoints = options.endpoint_list()
        limits = PoolLimits(
            strategy=options.strategy,
            max_concurrency=options.max_concurrency,
            max_waiting=options.max_waiting,
            breaker_failures=options.breaker_failures,
            breaker_cooldown_s=options.breaker_cooldown_s,
        )
        self.pool = EndpointPool(
            [(e.url, e.weight, e.api_key_env) for e in self.endpoints], limits, backend=backend, clock=clock
        )
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def check_keys(self) -> None:
        """At start-up: every ``api_key_env`` names a set variable (the key's value is never printed)."""
        for i, ep in enumerate(self.endpoints):
            if ep.api_key_env and not os.environ.get(ep.api_key_env):
                raise ConfigError(
                    f"{self.backend}: endpoint {i} ({redact(ep.url)}): environment variable {ep.api_key_env} "
                    "(api_key_env) is not set"
                )

    def _client_now(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client.is_closed or self._client_loop is not loop:
            self._client = _acquire_client(self.options.connect_timeout_s, self.options.read_timeout_s)
            self._client_loop = loop  # a client's connections belong to one event loop
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await _release_client(client)

    def _request(self, ep: EndpointState, call: HttpCall) -> httpx.Request:
        headers = dict(call.headers)
        if ep.api_key_env:
            key = os.environ.get(ep.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return self._client_now().build_request(
            call.method,
            join_url(ep.url, call.path),
            json=call.json,
            data=call.data,
            files=call.files,
            headers=headers,
        )

    def _backoff_s(self, attempt: int, retry_after_s: float) -> float:
        base = min(self.options.backoff_max_ms, self.options.backoff_ms * 2.0 ** (attempt - 1)) / 1000.0
        jittered = base * random.uniform(0.5, 1.0)
        return min(max(jittered, retry_after_s), self.options.backoff_max_ms / 1000.0)

    async def stream(
        self, call: HttpCall, parse: Callable[[httpx.Response], AsyncIterator[T]]
    ) -> AsyncGenerator[T, None]:
        """Items ``parse`` makes of the response body, from the first endpoint that gives one.

        Before the first item is yielded, a failure (connect error, timeout, 5xx, 429, dropped
        connection, malformed body) is retried up to ``retries`` times, on another endpoint when one
        is free; for a call that is not ``idempotent``, only a failure that proves the request was not
        acted on (``_AttemptFailed.unprocessed``). After the first item, a failure ends the stream with
        ``UpstreamError``: half a reply is never replayed. Closing this generator (barge-in) or
        cancelling its task closes the HTTP response at once, so the service sees the disconnect.
        Cancellation-safe: the endpoint slot is always returned, and ``CancelledError`` is never swallowed.
        """
        budget_s = self.options.total_timeout_s
        tried: set[int] = set()
        attempt = 0
        last: _AttemptFailed | None = None
        while True:
            started = time.monotonic()
            try:
                async with asyncio.timeout(budget_s):
                    ep = await self.pool.acquire(tried)
            except TimeoutError:
                code = "upstream_timeout" if attempt else "upstream_busy"
                raise UpstreamError(f"{self.backend}: no endpoint slot within total_timeout_s", code=code) from None
            budget_s = None if budget_s is None else budget_s - (time.monotonic() - started)
            handed_on = False
            outcome: Outcome = "neutral"
            failure: _AttemptFailed | None = None
            span = NOOP_SPAN  # the attempt's ``upstream.request`` span, under the caller's current span
            try:
                if ep.index in tried and attempt:
                    delay = self._backoff_s(attempt, last.retry_after_s if last else 0.0)
                    if budget_s is not None and delay >= budget_s:
                        raise _AttemptFailed(
                            "upstream_timeout", "no time left to retry", retryable=False, outcome="neutral"
                        )
                    await asyncio.sleep(delay)
                    budget_s = None if budget_s is None else budget_s - delay
                tried.add(ep.index)
                UPSTREAM_REQUESTS.inc(1.0, **ep.labels)
                parent = current_span()
                parent.set(upstream_endpoint=ep.name, upstream_retries=attempt)
                span = parent.child("upstream.request", backend=self.backend, endpoint=ep.name, attempt=attempt + 1)
                sent_at = time.monotonic()
                response: httpx.Response | None = None
                items: AsyncIterator[T] | None = None
                try:
                    step_at = time.monotonic()
                    async with asyncio.timeout(budget_s):
                        response = await self._client_now().send(self._request(ep, call), stream=True)
                        span.set(http_status=response.status_code)
                        await _check_status(response, ep.name)
                        items = parse(response).__aiter__()
                    budget_s = None if budget_s is None else budget_s - (time.monotonic() - step_at)
                    while True:
                        step_at = time.monotonic()
                        try:
                            async with asyncio.timeout(budget_s):
                                item = await items.__anext__()
                        except StopAsyncIteration:
                            break
                        budget_s = None if budget_s is None else budget_s - (time.monotonic() - step_at)
                        if not handed_on:
                            UPSTREAM_LATENCY_SUM.inc(time.monotonic() - sent_at, **ep.labels)
                            UPSTREAM_LATENCY_COUNT.inc(1.0, **ep.labels)
                            handed_on = True
                        yield item  # the consumer's time between items does not count toward the budget
                    outcome = "success"
                    return
                finally:
                    close_parser = getattr(items, "aclose", None)
                    if close_parser is not None:
                        await close_parser()  # its cleanup runs now, not at garbage collection
                    if response is not None:
                        await response.aclose()  # not fully read: httpx closes the connection
            except TimeoutError:
                failure = _AttemptFailed(
                    "upstream_timeout", f"{ep.name}: total_timeout_s reached", retryable=False, outcome="failure"
                )
            except (httpx.HTTPError, _AttemptFailed, UpstreamError) as exc:
                failure = _classify(exc, ep.name)
            except (asyncio.CancelledError, GeneratorExit):
                outcome = "success" if handed_on else "neutral"  # cut short by us, not by the service
                span.end("cancelled")
                raise
            finally:
                if failure is not None:
                    outcome = failure.outcome
                self.pool.release(ep, outcome, code=failure.code if failure else None)
                span.end("error" if failure else "ok", error=failure.code if failure else None)
            assert failure is not None
            last = failure
            attempt += 1
            if handed_on:
                raise UpstreamError(f"{self.backend}: reply broke off: {failure}", code=failure.code)
            safe = call.idempotent or failure.unprocessed  # another attempt cannot repeat a side effect
            if not failure.retryable or not safe or attempt > self.options.retries:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise UpstreamError(f"{self.backend}: failed{tries}: {failure}", code=failure.code)
            log.info("%s: attempt %d failed (%s), retrying", self.backend, attempt, failure)

"""stages/upstream_pool.py through real requests to fake services: balancing strategies, the concurrency cap
and its bounded wait line, circuit breakers (open, skip, half-open probe, recover), per-endpoint metrics.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from stages.engines.openai_llm import OpenAiLlm
from stages.upstream_pool import UPSTREAM_FAILURES, UPSTREAM_LATENCY_COUNT, UPSTREAM_REQUESTS
from tests.fakes import ask, llm, openai_fakes, reply, served
from tests.waiting import wait_until
from vocab.errors import UpstreamError
from vocab.metrics import METRICS
from vocab.options import build

# ---------------------------------------------------------------------- balancing


async def test_round_robin_spreads_evenly() -> None:
    async with openai_fakes(3) as fs, llm(*(f.url for f in fs)) as b:
        for _ in range(6):
            assert await reply(b) == "You said: hello there"
        assert [served(f) for f in fs] == [2, 2, 2]


async def test_weighted_follows_the_weights() -> None:
    async with openai_fakes(2) as (a, c):
        entry = {"model": "m", "strategy": "weighted", "endpoints": [{"url": a.url, "weight": 3}, {"url": c.url}]}
        backend = OpenAiLlm(build(OpenAiLlm.Options, entry, "llm"))
        try:
            for _ in range(8):
                await reply(backend)
        finally:
            await backend.aclose()
        assert (served(a), served(c)) == (6, 2)


async def test_least_connections_avoids_the_busy_endpoint() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url, strategy="least_connections") as b:
        a.default = c.default = "slow"
        a.drip_s = c.drip_s = 0.01
        held = ask(b)
        assert await anext(held) == "You"  # a request in flight on the first endpoint
        for _ in range(3):
            await reply(b)
        assert (served(a), served(c)) == (1, 3)
        await held.aclose()  # type: ignore[attr-defined]


async def test_random_uses_every_endpoint() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url, strategy="random") as b:
        for _ in range(30):
            await reply(b)
        assert served(a) > 0
        assert served(c) > 0
        assert served(a) + served(c) == 30


# ---------------------------------------------------------------------- concurrency cap and wait line


async def test_full_wait_line_fails_fast_with_busy() -> None:
    async with openai_fakes(1) as (a,), llm(a.url, max_concurrency=1, max_waiting=1) as b:
        a.default, a.drip_s = "slow", 0.01
        first = ask(b)
        assert await anext(first) == "You"  # holds the only slot
        waiting = asyncio.create_task(reply(b))
        await wait_until(lambda: b.upstream.pool.waiting == 1)
        with pytest.raises(UpstreamError) as err:
            await reply(b)
        assert err.value.code == "upstream_busy"
        assert b.upstream.pool.waiting == 1  # refused at once: it never joined the line
        assert served(a) == 1  # nor sent a request
        rest = "".join([d async for d in first])
        assert rest == " said: hello there"
        assert await asyncio.wait_for(waiting, 2) == "You said: hello there"


async def test_cancelled_waiter_leaves_the_line() -> None:
    async with openai_fakes(1) as (a,), llm(a.url, max_concurrency=1, max_waiting=1) as b:
        a.default, a.drip_s = "slow", 0.01
        first = ask(b)
        await anext(first)
        waiting = asyncio.create_task(reply(b))
        await wait_until(lambda: b.upstream.pool.waiting == 1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert b.upstream.pool.waiting == 0
        second = asyncio.create_task(reply(b))  # the line has room again
        await wait_until(lambda: b.upstream.pool.waiting == 1)
        await first.aclose()  # type: ignore[attr-defined]
        assert await asyncio.wait_for(second, 2) == "You said: hello there"


# ---------------------------------------------------------------------- circuit breaker


def breaker_gauge(url: str) -> str:
    lines = [ln for ln in METRICS.render().splitlines() if ln.startswith("voxpipe_upstream_breaker_state{")]
    return next(ln.rsplit(" ", 1)[1] for ln in lines if f'endpoint="{url}"' in ln)


class ManualClock:
    """The pool's clock, moved by the test: cool-downs pass exactly when the test says, however slow the host."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def manual_clock(backend: Any) -> ManualClock:
    clock = ManualClock()
    backend.upstream.pool.clock = clock
    return clock


async def test_breaker_opens_skips_and_recovers_after_a_probe() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url, breaker_failures=2, breaker_cooldown_s=10, retries=1) as b:
        clock = manual_clock(b)
        a.default = "http_500"
        for _ in range(4):  # round robin sends every other first attempt to a; its failures are retried on c
            assert await reply(b) == "You said: hello there"
        assert b.upstream.pool.endpoints[0].state == "open"
        assert breaker_gauge(a.url) == "2"
        before = served(a)
        clock.now += 9.9
        for _ in range(4):
            await reply(b)
        assert served(a) == before  # open: skipped
        a.default = "ok"
        clock.now += 0.1
        assert b.upstream.pool.snapshot()[0]["state"] == "half_open"
        assert breaker_gauge(a.url) == "1"
        await reply(b)  # the probe goes to a and succeeds
        assert served(a) == before + 1
        assert b.upstream.pool.snapshot()[0]["state"] == "closed"
        assert breaker_gauge(a.url) == "0"


async def test_failed_probe_reopens_the_breaker() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url, breaker_failures=1, breaker_cooldown_s=10) as b:
        clock = manual_clock(b)
        a.default = "http_503"
        await reply(b)
        assert b.upstream.pool.endpoints[0].state == "open"
        clock.now += 10
        await reply(b)  # probe on a fails, retried on c
        assert b.upstream.pool.endpoints[0].state == "open"
        assert a.behaviors == ["http_503", "http_503"]
        clock.now += 9
        await reply(b)
        assert len(a.requests) == 2  # a new cool-down began at the failed probe


async def test_all_endpoints_down_then_one_comes_back() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url, breaker_failures=2, breaker_cooldown_s=10) as b:
        clock = manual_clock(b)
        await a.down()
        await c.down()
        with pytest.raises(UpstreamError) as err:
            await reply(b)
        assert err.value.code == "upstream_unavailable"
        with pytest.raises(UpstreamError) as err:
            await reply(b)
        assert err.value.code == "upstream_unavailable"
        assert {ep.state for ep in b.upstream.pool.endpoints} == {"open"}
        started = time.monotonic()
        with pytest.raises(UpstreamError, match="circuit breaker is open") as err:
            await reply(b)
        assert err.value.code == "upstream_unavailable"
        assert time.monotonic() - started < 0.05  # fail fast: no connection attempted
        await c.up()
        clock.now += 10
        assert await reply(b) == "You said: hello there"
        assert b.upstream.pool.endpoints[1].state == "closed"


async def test_metrics_per_endpoint() -> None:
    async with openai_fakes(1) as (a,), llm(a.url) as b:
        labels = {"backend": "openai", "endpoint": a.url}
        # counters are per process and a fake's port may have served an earlier test: count the change
        before = (
            UPSTREAM_REQUESTS.get(**labels),
            UPSTREAM_FAILURES.get(code="upstream_unavailable", **labels),
            UPSTREAM_LATENCY_COUNT.get(**labels),
        )
        a.fail_next("http_500")
        await reply(b)
        assert UPSTREAM_REQUESTS.get(**labels) - before[0] == 2
        assert UPSTREAM_FAILURES.get(code="upstream_unavailable", **labels) - before[1] == 1
        assert UPSTREAM_LATENCY_COUNT.get(**labels) - before[2] == 1
        text = METRICS.render()  # and they are what /metrics shows
        label_text = f'backend="openai",endpoint="{a.url}"'
        assert f"voxpipe_upstream_requests_total{{{label_text}}} {UPSTREAM_REQUESTS.get(**labels):g}" in text
        assert f"voxpipe_upstream_breaker_state{{{label_text}}} 0" in text

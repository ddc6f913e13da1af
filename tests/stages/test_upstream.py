"""stages/upstream.py against fake services on loopback (real sockets, real httpx): options and their
validation, retries before the first byte only, timeouts, cancellation, the shared client, API keys.

The OpenAI-compatible chat backend is the vehicle: its fake speaks the real SSE protocol.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from stages.registry import build_pipeline
from stages.upstream import join_url, shared_client_count
from tests.fakes import ask, llm, openai_fakes, reply, served
from tests.fakes.services import FakeOpenAi
from vocab.errors import ConfigError, UpstreamError
from vocab.metrics import METRICS

# ---------------------------------------------------------------------- config


def test_unknown_strategy_names_the_key() -> None:
    entry = {"name": "llm", "engine": "openai", "model": "m", "url": "http://x", "strategy": "fastest"}
    with pytest.raises(ConfigError, match=r"pipeline\[0\]\.strategy: 'fastest' is not one of 'round_robin'"):
        build_pipeline([entry])


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"endpoints": [{"url": "http://a"}, {"url": "ftp://b"}]}, r"pipeline\[0\]\.endpoints\[1\]\.url"),
        ({"endpoints": [{"url": "http://a", "weight": 0}]}, r"pipeline\[0\]\.endpoints\[0\]\.weight"),
        ({"endpoints": [{"url": "http://a", "api_key": "sk-1"}]}, r"pipeline\[0\]\.endpoints\[0\]\.api_key: unknown"),
        ({"url": "http://a", "endpoints": [{"url": "http://b"}]}, r"pipeline\[0\]\.url: give either"),
        ({}, r"pipeline\[0\]\.endpoints: at least one"),
        ({"url": "http://a", "max_concurrency": 0}, r"pipeline\[0\]\.max_concurrency"),
        ({"url": "http://a", "retries": -1}, r"pipeline\[0\]\.retries"),
        ({"url": "http://a", "read_timeout_s": "soon"}, r"pipeline\[0\]\.read_timeout_s: expected a number"),
        ({"url": "http://a", "breaker_failures": 0}, r"pipeline\[0\]\.breaker_failures"),
    ],
)
def test_bad_options_name_their_key(extra: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_pipeline([{"name": "llm", "engine": "openai", "model": "m", **extra}])


def test_missing_api_key_variable_fails_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXPIPE_TEST_MISSING_KEY", raising=False)
    spec = build_pipeline(
        [{"engine": "openai", "model": "m", "url": "http://a", "api_key_env": "VOXPIPE_TEST_MISSING_KEY"}]
    )[0]
    with pytest.raises(ConfigError, match="VOXPIPE_TEST_MISSING_KEY"):
        spec.factory.load(lambda _text: None)


def test_join_url_does_not_double_v1() -> None:
    assert join_url("http://h:8000", "/v1/chat/completions") == "http://h:8000/v1/chat/completions"
    assert (
        join_url("https://api.openai.com/v1/", "/v1/chat/completions") == "https://api.openai.com/v1/chat/completions"
    )
    assert join_url("http://h/ollama", "/api/chat") == "http://h/ollama/api/chat"


# ---------------------------------------------------------------------- retries before the first byte only


@pytest.mark.parametrize("fault", ["http_500", "http_503", "http_429", "refuse", "malformed"])
async def test_failure_before_first_byte_is_retried_on_another_endpoint(fault: str) -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url) as b:
        a.fail_next(fault)
        assert await reply(b) == "You said: hello there"  # whole, once
        assert (a.behaviors, c.behaviors) == ([fault], ["ok"])


async def test_connection_refused_endpoint_is_skipped_to_the_next() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url, connect_timeout_s=5.0) as b:
        await a.down()
        started = time.monotonic()
        assert await reply(b) == "You said: hello there"
        assert time.monotonic() - started < 2.0  # refused at once, not a connect timeout
        assert served(c) == 1


async def test_hang_before_first_byte_times_out_and_moves_on() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url, read_timeout_s=0.3) as b:
        a.fail_next("hang")
        started = time.monotonic()
        assert await reply(b) == "You said: hello there"
        assert 0.3 <= time.monotonic() - started < 1.5
        await a.wait_disconnect(0)  # the hung request was closed by the client


async def test_retries_exhausted_report_the_last_code() -> None:
    async with openai_fakes(1) as (a,), llm(a.url, retries=2) as b:
        a.fail_next("http_503", "http_503", "http_503", "http_503")
        with pytest.raises(UpstreamError) as err:
            await reply(b)
        assert err.value.code == "upstream_unavailable"
        assert "after 3 attempts" in err.value.message
        assert "HTTP 503" in err.value.message
        assert served(a) == 3


async def test_rate_limited_everywhere_is_busy() -> None:
    async with openai_fakes(1) as (a,), llm(a.url, retries=1) as b:
        a.fail_next("http_429", "http_429")
        with pytest.raises(UpstreamError) as err:
            await reply(b)
        assert err.value.code == "upstream_busy"


async def test_client_errors_are_not_retried() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url, path="/v1/no/such/route") as b:
        with pytest.raises(UpstreamError) as err:
            await reply(b)
        assert err.value.code == "upstream_bad_response"
        assert "HTTP 404" in err.value.message
        assert "Unknown request URL" in err.value.message
        assert served(a) + served(c) == 1  # another endpoint would say the same
        assert {ep.state for ep in b.upstream.pool.endpoints} == {"closed"}


async def test_wrong_api_key_is_a_bad_response_and_never_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeOpenAi(api_key="sk-right-key") as a:
        monkeypatch.setenv("VOXPIPE_TEST_KEY", "sk-wrong-secret")
        async with llm(a.url, api_key_env="VOXPIPE_TEST_KEY") as b:
            b.load(lambda _text: None)
            with pytest.raises(UpstreamError) as err:
                await reply(b)
            assert err.value.code == "upstream_bad_response"
            assert "401" in err.value.message
            assert served(a) == 1  # not retried: another attempt would say the same
            monkeypatch.setenv("VOXPIPE_TEST_KEY", "sk-right-key")
            assert await reply(b) == "You said: hello there"
        assert a.requests[-1].headers["authorization"] == "Bearer sk-right-key"
    assert "sk-wrong-secret" not in caplog.text
    assert "sk-right-key" not in caplog.text
    assert "sk-wrong-secret" not in str(err.value)


# ---------------------------------------------------------------------- after the first byte: never replay


async def test_midway_failure_ends_the_reply_without_replaying() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url) as b:
        a.fail_next("midway")
        got: list[str] = []
        with pytest.raises(UpstreamError) as err:
            async for delta in ask(b, "one two three four five six"):
                got.append(delta)
        assert err.value.code == "upstream_unavailable"
        assert "broke off" in err.value.message
        assert got
        assert "".join(got) != "You said: one two three four five six"
        assert "You said: one two three four five six".startswith("".join(got))  # a prefix, nothing twice
        assert (served(a), served(c)) == (1, 0)


async def test_stall_midway_is_a_timeout() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url, read_timeout_s=0.3) as b:
        a.fail_next("stall")
        got: list[str] = []
        with pytest.raises(UpstreamError) as err:
            async for delta in ask(b, "one two three four"):
                got.append(delta)
        assert err.value.code == "upstream_timeout"
        assert got
        assert served(c) == 0


async def test_malformed_line_midway_is_a_bad_response() -> None:
    async with openai_fakes(2) as (a, c), llm(a.url, c.url) as b:
        a.fail_next("malformed_midway")
        got: list[str] = []
        with pytest.raises(UpstreamError) as err:
            async for delta in ask(b, "one two three four"):
                got.append(delta)
        assert err.value.code == "upstream_bad_response"
        assert "malformed JSON" in err.value.message
        assert got
        assert served(c) == 0


async def test_error_object_midway_is_a_bad_response() -> None:
    async with openai_fakes(1) as (a,), llm(a.url) as b:
        a.fail_next("error")
        with pytest.raises(UpstreamError) as err:
            await reply(b, "one two three four")
        assert err.value.code == "upstream_bad_response"
        assert "model crashed" in err.value.message


async def test_total_timeout_covers_a_slow_drip() -> None:
    async with openai_fakes(1) as (a,), llm(a.url, total_timeout_s=0.3, read_timeout_s=5.0) as b:
        a.default, a.drip_s = "slow", 0.1
        with pytest.raises(UpstreamError) as err:
            await reply(b, "a b c d e f g h i j")
        assert err.value.code == "upstream_timeout"


async def test_slow_drip_within_limits_arrives_whole_and_in_order() -> None:
    async with openai_fakes(1) as (a,), llm(a.url) as b:
        a.default, a.drip_s = "slow", 0.02
        deltas = [d async for d in ask(b, "one two three")]
        assert deltas == ["You", " said:", " one", " two", " three"]


# ---------------------------------------------------------------------- cancellation closes the request


async def test_closing_the_stream_closes_the_upstream_request() -> None:
    async with openai_fakes(1) as (a,), llm(a.url) as b:
        a.default, a.drip_s = "slow", 0.2
        stream = ask(b, "one two three four five six seven")
        assert await anext(stream) == "You"
        await stream.aclose()  # type: ignore[attr-defined]
        assert await a.wait_disconnect(0, timeout_s=1.0) < 0.5
        assert b.upstream.pool.endpoints[0].in_flight == 0
        assert b.upstream.pool.endpoints[0].state == "closed"


async def test_cancelling_while_waiting_for_the_first_byte_disconnects() -> None:
    async with openai_fakes(1) as (a,), llm(a.url, read_timeout_s=10) as b:
        a.fail_next("hang")
        task = asyncio.create_task(reply(b))
        await a.wait_requests(1)  # the service is now sitting on the request
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await a.wait_disconnect(0, timeout_s=1.0) < 0.5
        assert b.upstream.pool.endpoints[0].failures == 0  # our cancel is not the service's failure


# ---------------------------------------------------------------------- shared client, credentials


async def test_backends_share_one_pooled_client_and_release_it() -> None:
    async with openai_fakes(1) as (a,):
        before = shared_client_count()
        async with llm(a.url) as one, llm(a.url) as two:
            await reply(one)
            await reply(two)
            await reply(one)
            assert one.upstream._client is two.upstream._client
            assert shared_client_count() == before + 1
            assert a.http.connections == 1  # keep-alive: one TCP connection for all three
        assert shared_client_count() == before


async def test_credentials_in_a_url_stay_out_of_labels_and_messages() -> None:
    async with openai_fakes(1) as (a,):
        secret_url = a.url.replace("http://", "http://user:hunter2@")
        async with llm(secret_url) as b:
            assert await reply(b) == "You said: hello there"
            assert a.requests[0].headers["authorization"].startswith("Basic ")  # httpx sent them
            a.fail_next("http_500", "http_500", "http_500")
            with pytest.raises(UpstreamError) as err:
                await reply(b)
            assert "hunter2" not in err.value.message
            assert "http://***@127.0.0.1" in err.value.message
            assert "hunter2" not in METRICS.render()

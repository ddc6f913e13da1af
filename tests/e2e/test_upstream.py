"""Upstream backends end to end: the real server on a free port, a real WebSocket client, and fake model
services on loopback. Replies stream through in order; failures reach the client as ``error`` (fatal
false) and the session goes on; barge-in and a vanished client close the upstream request.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.client import TEST_PIPELINE, Client, running_server, silence, test_config, tone
from tests.fakes.services import FakeDify, FakeGptSovits, FakeOllama, FakeOpenAi

Message = dict[str, Any]
FAST = {"retries": 2, "backoff_ms": 1, "connect_timeout_s": 1.0, "read_timeout_s": 1.0}


def pipeline(llm: Message | None = None, tts: Message | None = None, asr: Message | None = None) -> list[Message]:
    stages = copy.deepcopy(TEST_PIPELINE)
    for i, entry in ((1, asr), (2, llm), (3, tts)):
        if entry is not None:
            stages[i] = {"name": stages[i]["name"], **FAST, **entry}
    return stages


@contextlib.asynccontextmanager
async def conversation(stages: list[Message], **client: Any) -> AsyncIterator[tuple[Any, Client]]:
    async with running_server(test_config(pipeline=stages)) as srv, Client.connect(srv.url, **client) as c:
        yield srv, c


def replies(msgs: list[Message]) -> str:
    return "".join(m["text"] for m in msgs if m["type"] == "reply")


def audio_bytes(msgs: list[Message]) -> int:
    return sum(len(m["data"]) for m in msgs if m["type"] == "audio")


def errors(msgs: list[Message]) -> list[Message]:
    return [m for m in msgs if m["type"] == "error"]


# ---------------------------------------------------------------------- every backend, one turn


@pytest.mark.parametrize("engine", ["openai", "ollama", "dify"])
async def test_llm_backend_reply_streams_through_the_socket(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXPIPE_TEST_DIFY_KEY", "app-fake-key")
    fakes = {"openai": FakeOpenAi, "ollama": FakeOllama, "dify": FakeDify}
    extra = {
        "openai": {"model": "m"},
        "ollama": {"model": "llama3.2"},
        "dify": {"api_key_env": "VOXPIPE_TEST_DIFY_KEY"},
    }
    async with fakes[engine]() as fake:
        llm = {"engine": engine, "url": fake.url, **extra[engine]}
        async with conversation(pipeline(llm=llm)) as (_srv, c):
            await c.send({"type": "text", "text": "hello there"})
            msgs = await c.turn()
            expected = "You said: hello there" + (". Message 1." if engine == "dify" else "")
            deltas = [m for m in msgs if m["type"] == "reply"]
            assert [m["text"] for m in deltas if m["text"]] == [
                w if i == 0 else " " + w for i, w in enumerate(expected.split())
            ]
            assert deltas[-1]["final"] is True
            assert audio_bytes(msgs) == len(expected.split()) * 1600 * 2  # tone tts: 100 ms per word
            assert msgs[-1]["type"] == "turn_end"
            assert not errors(msgs)
            await c.send({"type": "text", "text": "again"})
            second = replies(await c.turn())
            assert second.startswith("You said: again")
            if engine == "dify":
                assert second.endswith("Message 2.")  # the session's Dify conversation goes on
            else:
                assert fake.requests[1].json()["messages"][-3:] == [
                    {"role": "user", "content": "hello there"},
                    {"role": "assistant", "content": expected},
                    {"role": "user", "content": "again"},
                ]


@pytest.mark.parametrize("engine", ["openai_tts", "gpt_sovits"])
async def test_tts_backend_audio_reaches_the_client(engine: str) -> None:
    fake_cls = FakeOpenAi if engine == "openai_tts" else FakeGptSovits
    async with fake_cls() as fake:
        tts: Message = {"engine": engine, "url": fake.url}
        if engine == "gpt_sovits":
            tts |= {"ref_audio_path": "refs/a.wav", "prompt_text": "Hi.", "prompt_lang": "en"}
        async with conversation(pipeline(tts=tts)) as (_srv, c):
            await c.send({"type": "say", "text": "four words right here"})
            msgs = await c.turn()
            assert msgs[-1]["type"] == "turn_end"
            audio = [m for m in msgs if m["type"] == "audio"]
            assert [m["seq"] for m in audio] == list(range(len(audio)))
            # 400 ms of speech from the service, resampled to the client's 16 kHz (± the resampler's tail)
            assert abs(audio_bytes(msgs) / 2 - 4 * 1600) < 200
            assert fake.requests[0].json()["text" if engine == "gpt_sovits" else "input"] == "four words right here"


async def test_openai_asr_transcribes_the_spoken_turn() -> None:
    async with FakeOpenAi() as fake:
        async with conversation(pipeline(asr={"engine": "openai_asr", "url": fake.url})) as (_srv, c):
            await c.stream_audio(silence(100) + tone(600) + silence(300))
            msgs = await c.turn()
            finals = [m for m in msgs if m["type"] == "transcript" and m["final"]]
            assert len(finals) == 1
            assert finals[0]["text"].startswith("hello from the fake (")
            assert "at 16000 Hz" in finals[0]["text"]
            assert replies(msgs).startswith("You said: hello from the fake")
            assert len(fake.requests) == 1  # final only: no partial uploads


# ---------------------------------------------------------------------- failures


async def test_failed_endpoint_is_retried_on_another_before_the_first_byte() -> None:
    async with FakeOpenAi() as a, FakeOpenAi() as b:
        a.fail_next("http_503")
        llm = {"engine": "openai", "model": "m", "endpoints": [{"url": a.url}, {"url": b.url}]}
        async with conversation(pipeline(llm=llm)) as (_srv, c):
            await c.send({"type": "text", "text": "one two three"})
            msgs = await c.turn()
            assert replies(msgs) == "You said: one two three"
            assert not errors(msgs)
            assert (len(a.requests), len(b.requests)) == (1, 1)


async def test_midway_failure_ends_the_turn_with_an_error_and_no_duplicate_text() -> None:
    async with FakeOpenAi() as a, FakeOpenAi() as b:
        a.fail_next("midway")
        llm = {
            "engine": "openai",
            "model": "m",
            "strategy": "round_robin",
            "endpoints": [{"url": a.url}, {"url": b.url}],
        }
        async with conversation(pipeline(llm=llm)) as (_srv, c):
            await c.send({"type": "text", "text": "one two three four five six"})
            msgs = await c.turn()
            turn = msgs[-1]["turn"]
            text = replies(msgs)
            assert text
            assert "You said: one two three four five six".startswith(text)
            assert text != "You said: one two three four five six"
            [error] = errors(msgs)
            assert error["code"] == "upstream_unavailable"
            assert error["fatal"] is False
            assert error["turn"] == turn
            assert error["message"].startswith("llm: ")
            assert msgs[-1]["type"] == "turn_end"
            assert len(b.requests) == 0  # half a reply is never replayed elsewhere
            await c.send({"type": "text", "text": "still there"})
            nxt = await c.turn()
            assert replies(nxt) == "You said: still there"
            assert not errors(nxt)


async def test_all_endpoints_down_then_one_comes_back(caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAi() as a, FakeOpenAi() as b:
        await a.down()
        await b.down()
        llm = {
            "engine": "openai",
            "model": "m",
            "endpoints": [{"url": a.url}, {"url": b.url}],
            "breaker_failures": 1,
            "breaker_cooldown_s": 30,
        }
        async with conversation(pipeline(llm=llm), framing="json") as (srv, c):
            now = [1000.0]
            srv.specs[2].factory.backend.upstream.pool.clock = lambda: now[0]  # cool-downs pass when we say
            await c.send({"type": "text", "text": "anyone home"})
            msgs = await c.turn()
            [error] = errors(msgs)
            assert error["code"] == "upstream_unavailable"
            assert error["fatal"] is False
            assert replies(msgs) == ""
            await c.send({"type": "text", "text": "still nobody"})  # breakers open: fails fast
            msgs = await c.turn()
            assert "circuit breaker is open" in caplog.records[-1].getMessage()  # the details: in the log
            assert errors(msgs)[0]["code"] == "upstream_unavailable"
            await b.up()
            now[0] += 30
            await c.send({"type": "text", "text": "back now"})
            msgs = await c.turn()
            assert replies(msgs) == "You said: back now"
            assert not errors(msgs)


async def test_tts_service_failure_reaches_the_client(caplog: pytest.LogCaptureFixture) -> None:
    async with FakeOpenAi() as fake:
        fake.default = "http_500"
        async with conversation(pipeline(tts={"engine": "openai_tts", "url": fake.url, "retries": 1})) as (_srv, c):
            await c.send({"type": "say", "text": "this will not be spoken"})
            msgs = await c.turn()
            [error] = errors(msgs)
            assert (error["code"], error["fatal"]) == ("upstream_unavailable", False)
            assert error["message"] == "tts: the model service is unavailable"
            assert "HTTP 500" in caplog.text  # the details: in the server log
            assert len(fake.requests) == 2
            fake.default = "ok"
            await c.send({"type": "say", "text": "now it works"})
            msgs = await c.turn()
            assert not errors(msgs)
            assert audio_bytes(msgs) > 0


# ---------------------------------------------------------------------- cancellation


async def test_interrupt_closes_the_upstream_llm_request() -> None:
    async with FakeOpenAi(reply=" ".join(f"word{i}." for i in range(40))) as fake:
        fake.default, fake.drip_s = "slow", 0.05
        async with conversation(pipeline(llm={"engine": "openai", "model": "m", "url": fake.url})) as (_srv, c):
            await c.send({"type": "text", "text": "talk for a while"})
            await c.recv_until(lambda m: m["type"] == "reply" and "word2" in m["text"])
            await c.send({"type": "interrupt"})
            await c.recv_type("interrupted")
            assert await fake.wait_disconnect(0, timeout_s=1.0) < 0.5
            assert not fake.exchanges[0].finished
            later = await c.quiet(0.3)
            assert not [m for m in later if m["type"] in ("reply", "audio", "turn_end")]


async def test_barge_in_by_voice_closes_the_upstream_tts_request() -> None:
    async with FakeOpenAi() as fake:
        fake.default, fake.drip_s = "slow", 0.05  # each 1001-byte piece of speech takes 50 ms to arrive
        tts = {"engine": "openai_tts", "url": fake.url}
        async with conversation(pipeline(tts=tts)) as (_srv, c):
            await c.send({"type": "say", "text": " ".join(["speaking"] * 40)})
            await c.recv_type("audio")
            await c.stream_audio(tone(600), realtime=1.0)
            interrupted = await c.recv_type("interrupted", timeout=5)
            assert interrupted["turn"] == 1
            assert await fake.wait_disconnect(0, timeout_s=1.0) < 1.0
            assert not fake.exchanges[0].finished


async def test_client_gone_closes_the_upstream_request() -> None:
    async with FakeOpenAi(reply=" ".join(["more"] * 60)) as fake:
        fake.default, fake.drip_s = "slow", 0.05
        llm = {"engine": "openai", "model": "m", "url": fake.url}
        async with running_server(test_config(pipeline=pipeline(llm=llm))) as srv:
            async with Client.connect(srv.url) as c:
                await c.send({"type": "text", "text": "go on"})
                await c.recv_type("reply")
            assert await fake.wait_disconnect(0, timeout_s=1.0) < 0.5


async def test_barge_in_while_the_service_hangs_closes_the_request() -> None:
    async with FakeOpenAi() as fake:
        fake.fail_next("hang")
        llm = {"engine": "openai", "model": "m", "url": fake.url, "read_timeout_s": 5.0}
        async with conversation(pipeline(llm=llm)) as (_srv, c):
            await c.send({"type": "text", "text": "hello"})
            await fake.wait_requests(1)
            await c.send({"type": "interrupt"})
            await c.recv_type("interrupted")
            assert await fake.wait_disconnect(0, timeout_s=1.0) < 0.5
            await c.send({"type": "text", "text": "hello again"})
            assert replies(await c.turn()) == "You said: hello again"


# ---------------------------------------------------------------------- metrics over HTTP


async def test_metrics_endpoint_shows_upstream_figures() -> None:
    async with FakeOpenAi() as fake:
        fake.fail_next("http_500")
        llm = {"engine": "openai", "model": "m", "url": fake.url}
        async with conversation(pipeline(llm=llm)) as (srv, c):
            await c.send({"type": "text", "text": "count me"})
            await c.turn()
            async with httpx.AsyncClient() as http:
                text = (await http.get(srv.http_url + "metrics")).text
            labels = f'backend="openai",endpoint="{fake.url}"'
            assert f"voxpipe_upstream_requests_total{{{labels}}} 2" in text
            failures = f'backend="openai",code="upstream_unavailable",endpoint="{fake.url}"'
            assert f"voxpipe_upstream_failures_total{{{failures}}} 1" in text
            assert f"voxpipe_upstream_first_byte_seconds_count{{{labels}}} 1" in text
            assert f"voxpipe_upstream_breaker_state{{{labels}}} 0" in text


# ---------------------------------------------------------------------- what a failure tells the client (issue 13 #6)


async def test_upstream_failure_details_stay_in_the_server_log(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A service answering 401 with the (partly masked) key in its body, and one that is not listening: the client
    gets the stable code and a generic message (no URL, no status, no body); the details go to the server log
    at WARNING with the session id."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("VOXPIPE_TEST_KEY", "sk-wrong-key-5678")
    async with FakeOpenAi(api_key="sk-right-key") as fake, FakeOpenAi() as gone:
        await gone.down()
        stages = pipeline(
            llm={"engine": "openai", "model": "m", "url": fake.url, "api_key_env": "VOXPIPE_TEST_KEY"},
            tts={"engine": "openai_tts", "url": gone.url, "retries": 0},
        )
        async with conversation(stages) as (_srv, c):
            session = c.ready["session"]
            await c.send({"type": "text", "text": "hello"})
            [llm_error] = errors(await c.turn())
            await c.send({"type": "say", "text": "hello"})
            [tts_error] = errors(await c.turn())
    assert (llm_error["code"], llm_error["fatal"]) == ("upstream_bad_response", False)
    assert (tts_error["code"], tts_error["fatal"]) == ("upstream_unavailable", False)
    for error, stage in ((llm_error, "llm"), (tts_error, "tts")):
        message = error["message"]
        assert message.startswith(f"{stage}: the model service "), message
        for detail in ("5678", "sk-", "401", "127.0.0.1", str(fake.http.port), str(gone.http.port), "http"):
            assert detail not in message, (detail, message)
    logged = [r for r in caplog.records if r.name.startswith("voxpipe") and r.levelno == logging.WARNING]
    text = "\n".join(r.getMessage() for r in logged)
    assert f"session {session}" in text
    assert "HTTP 401" in text
    assert "5678" in text  # the masked key from the service's body: the operator's to see, never the client's
    assert "sk-wrong-key-5678" not in text  # the key itself is never logged
    assert f"127.0.0.1:{gone.http.port}" in text

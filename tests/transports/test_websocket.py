"""transports/websocket.py and server/http.py: handshake, close codes, and the HTTP routes on the same port."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import msgpack
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.client import Client, running_server, test_config
from transports.messages import CLIENT_MESSAGES, SERVER_MESSAGES
from vocab.errors import ConfigError

pytestmark = pytest.mark.asyncio


def http_get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read()


async def get(url: str) -> tuple[int, str, bytes]:
    return await asyncio.to_thread(http_get, url)


async def test_http_routes_share_the_port() -> None:
    async with running_server() as srv:
        status, kind, body = await get(srv.http_url + "healthz")
        health = json.loads(body)
        assert status == 200
        assert kind.startswith("application/json")
        assert health["status"] == "ok"
        assert [g["name"] for g in health["graph"]] == [
            "vad",
            "asr",
            "llm",
            "tts",
        ]
        status, kind, body = await get(srv.http_url)
        assert status == 200
        assert kind.startswith("text/html")
        assert b"<" in body
        status, kind, body = await get(srv.http_url + "schema")
        schema = json.loads(body)
        for cls in CLIENT_MESSAGES:
            assert schema["$defs"][f"client.{cls.type}"]["properties"]["type"] == {"const": cls.type}
        for cls in SERVER_MESSAGES:
            assert f"server.{cls.type}" in schema["$defs"]
        assert schema["$defs"]["server.audio"]["required"] == ["type", "stage", "turn", "seq", "data"]
        with pytest.raises(urllib.error.HTTPError) as info:
            await get(srv.http_url + "nope/../../etc/passwd")
        assert info.value.code == 404


async def test_metrics_count_sessions_turns_and_errors() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        await c.send({"type": "text", "text": "count me"})
        await c.turn()
        await c.send({"type": "warp"})
        await c.recv_type("error")
        _, kind, body = await get(srv.http_url + "metrics")
        text = body.decode()
        assert kind.startswith("text/plain")
        assert "voxpipe_sessions_open 1" in text
        assert 'voxpipe_turns_total{outcome="end"}' in text
        assert 'voxpipe_errors_total{code="unknown_type"}' in text


async def test_metrics_token_guards_the_metrics_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXPIPE_TEST_METRICS_TOKEN", "s3cret-metrics")
    config = test_config(server={"metrics_token_env": "VOXPIPE_TEST_METRICS_TOKEN"})
    async with running_server(config) as srv:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-metrics"}):
            request = urllib.request.Request(srv.http_url + "metrics", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as info:
                await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
            assert info.value.code == 401
            assert info.value.headers["WWW-Authenticate"].startswith("Bearer")
        request = urllib.request.Request(srv.http_url + "metrics", headers={"Authorization": "Bearer s3cret-metrics"})
        with await asyncio.to_thread(urllib.request.urlopen, request, timeout=5) as resp:
            assert resp.status == 200
            assert b"voxpipe_sessions_open 0" in resp.read()
        status, _, _ = await get(srv.http_url + "healthz")  # the health probe stays open
        assert status == 200


async def test_metrics_token_env_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOXPIPE_TEST_METRICS_TOKEN", raising=False)
    config = test_config(server={"metrics_token_env": "VOXPIPE_TEST_METRICS_TOKEN"})
    with pytest.raises(ConfigError, match=r"server\.metrics_token_env: .* VOXPIPE_TEST_METRICS_TOKEN is not set"):
        async with running_server(config):
            pass


@pytest.mark.parametrize("first", ['{"type": "text", "text": "hi"}', "garbage", msgpack.packb({"type": "ping"})])
async def test_first_message_not_hello_is_fatal_1002(first: str | bytes) -> None:
    async with running_server() as srv, Client.connect(srv.url, send_hello=False) as c:
        await c.send_raw(first)
        err = await c.recv_type("error")
        assert err["fatal"] is True
        assert err["code"] == "not_hello"
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.ws.close_code == 1002


async def test_bad_hello_field_is_not_fatal_and_a_good_hello_follows() -> None:
    async with running_server() as srv, Client.connect(srv.url, send_hello=False, framing="json") as c:
        await c.send({"type": "hello", "protocol": 1, "audio_in": {"format": "pcm16", "rate": 11025, "channels": 1}})
        err = await c.recv_type("error")
        assert err["code"] == "bad_field"
        assert err["fatal"] is False
        assert "audio_in.rate" in err["message"]
        await c.send({"type": "hello", "protocol": 1, "subscribe": ["nope"]})
        assert (await c.recv_type("error"))["code"] == "unknown_stage"
        ready = await c.hello()
        assert ready["protocol"] == 1
        assert ready["session"]


async def test_replies_use_the_hello_framing() -> None:
    async with running_server() as srv:
        async with Client.connect(srv.url, framing="json") as c:
            await c.send({"type": "ping", "id": 1})
            frame = await c.ws.recv()
            assert isinstance(frame, str)
            assert json.loads(frame) == {"type": "pong", "id": 1, "session_seq": 2}  # ready was 1
            # msgpack input is accepted at any time; replies stay JSON
            await c.ws.send(msgpack.packb({"type": "ping", "id": 2}))
            assert isinstance(await c.ws.recv(), str)
        async with Client.connect(srv.url, framing="msgpack") as c:
            await c.send({"type": "ping", "id": 3})
            frame = await c.ws.recv()
            assert isinstance(frame, bytes)
            assert msgpack.unpackb(frame)["id"] == 3


async def test_oversize_frame_closes_1009() -> None:
    async with (
        running_server(test_config(server={"max_frame_bytes": 4096})) as srv,
        Client.connect(srv.url) as c,
    ):
        await c.send({"type": "audio", "data": b"\x00" * 8192})
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.ws.close_code == 1009


async def test_bye_closes_1000() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        await c.send({"type": "bye"})
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.ws.close_code == 1000


async def test_session_limit_refuses_with_503_at_the_handshake() -> None:
    async with running_server(test_config(server={"max_sessions": 1})) as srv, Client.connect(srv.url):
        with pytest.raises(InvalidStatus) as info:
            async with connect(srv.url):
                pass
        assert info.value.response.status_code == 503
        assert json.loads(info.value.response.body)["code"] == "server_full"


async def test_session_limit_after_the_handshake_refuses_with_1013() -> None:
    """Two handshakes that both passed the early check: the second hello is refused (1013)."""
    async with running_server(test_config(server={"max_sessions": 1})) as srv:
        srv.admission.max_sessions = 2  # as if both handshakes had raced past the early check
        async with connect(srv.url) as first, connect(srv.url) as second:
            await first.send(json.dumps({"type": "hello", "protocol": 1}))
            assert json.loads(await first.recv())["type"] == "ready"
            await second.send(json.dumps({"type": "hello", "protocol": 1}))
            err = json.loads(await second.recv())
            assert err["code"] == "server_full"
            assert err["fatal"] is True
            with pytest.raises(ConnectionClosed):
                await second.recv()
            assert second.close_code == 1013


async def test_hello_timeout_closes() -> None:
    async with running_server(test_config(server={"hello_timeout_s": 0.3})) as srv:
        async with connect(srv.url) as ws:
            err = json.loads(await asyncio.wait_for(ws.recv(), 3))
            assert err["code"] == "hello_timeout"
            assert err["fatal"] is True
            with pytest.raises(ConnectionClosed):
                await ws.recv()
            assert ws.close_code == 1008

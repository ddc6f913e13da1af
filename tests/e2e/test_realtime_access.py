"""``/v1/realtime`` access and limits, as for ``/ws``: tokens (Bearer header, the browser subprotocol form),
origins, caps, the message rate; the beta dialect by header or subprotocol; the endpoint turned off."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin, Subprotocol

from tests.client import running_server, test_config
from tests.realtime import sdk_connect

pytestmark = pytest.mark.asyncio
KEY = "k" * 24
TOKENS = {"auth": {"mode": "tokens", "tokens": {KEY: "alice"}}}


async def first_event(ws: ClientConnection) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await ws.recv())
    return event


async def status_of(url: str, **kwargs: Any) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    return info.value.response.status_code


async def test_the_sdks_api_key_is_the_bearer_token() -> None:
    async with running_server(test_config(**TOKENS)) as srv:
        async with sdk_connect(srv, api_key=KEY) as conn:
            assert (await conn.recv()).type == "session.created"
        assert (
            await status_of(srv.realtime_url + "?model=x", additional_headers={"Authorization": "Bearer wrong"}) == 401
        )
        with pytest.raises(Exception, match="401"):
            async with sdk_connect(srv, api_key="wrong-key-wrong-key"):
                pass


async def test_a_browser_puts_the_key_in_a_subprotocol_and_gets_realtime_back() -> None:
    offered = [Subprotocol("realtime"), Subprotocol(f"openai-insecure-api-key.{KEY}")]
    async with running_server(test_config(**TOKENS)) as srv:
        async with connect(srv.realtime_url + "?model=x", subprotocols=offered) as ws:
            assert ws.subprotocol == "realtime"  # chosen among those offered; the key is never echoed
            assert ws.response is not None
            assert KEY not in str(ws.response.headers)
            event = await first_event(ws)
            assert event["type"] == "session.created"
            assert event["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        bad = [Subprotocol("realtime"), Subprotocol("openai-insecure-api-key.nope-nope-nope")]
        assert await status_of(srv.realtime_url, subprotocols=bad) == 401


async def test_no_token_at_all_gets_the_error_then_1008() -> None:
    async with running_server(test_config(**TOKENS)) as srv, connect(srv.realtime_url) as ws:
        event = await first_event(ws)
        assert (event["type"], event["error"]["code"]) == ("error", "unauthorized")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code == 1008


@pytest.mark.parametrize(
    "how",
    [{"additional_headers": {"OpenAI-Beta": "realtime=v1"}}, {"subprotocols": ["realtime", "openai-beta.realtime-v1"]}],
)
async def test_the_beta_dialect_by_header_or_subprotocol(how: dict[str, Any]) -> None:
    async with running_server() as srv, connect(srv.realtime_url + "?model=gpt-4o-realtime-preview", **how) as ws:
        session = (await first_event(ws))["session"]
        assert (session["input_audio_format"], session["model"]) == ("pcm16", "gpt-4o-realtime-preview")
        assert session["modalities"] == ["text", "audio"]
        assert session["turn_detection"]["silence_duration_ms"] == 200  # the test pipeline's VAD end_ms
        await ws.send(
            json.dumps(
                {
                    "type": "conversation.item.create",
                    "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                }
            )
        )
        await ws.send(json.dumps({"type": "response.create", "response": {"modalities": ["text"]}}))
        kinds: list[str] = []
        while "response.done" not in kinds:
            kinds.append((await first_event(ws))["type"])
        assert "response.text.delta" in kinds
        assert "conversation.item.created" in kinds
        assert "conversation.item.added" not in kinds


async def test_origins_and_caps_apply_as_for_ws() -> None:
    config = test_config(auth={"allowed_origins": ["https://app.example"]}, limits={"max_sessions_per_ip": 1})
    async with running_server(config) as srv:
        assert await status_of(srv.realtime_url, origin=Origin("https://evil.example")) == 403
        async with connect(srv.realtime_url, origin=Origin("https://app.example")) as ws:
            assert (await first_event(ws))["type"] == "session.created"
            assert await status_of(srv.realtime_url) == 503  # one per address


async def test_a_message_flood_closes_1008_after_the_error() -> None:
    config = test_config(limits={"messages_per_s": 5, "messages_burst": 5})
    async with running_server(config) as srv, connect(srv.realtime_url) as ws:
        assert (await first_event(ws))["type"] == "session.created"
        for _ in range(20):
            await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        seen = []
        with pytest.raises(ConnectionClosed):
            while True:
                seen.append(await first_event(ws))
        assert seen[-1]["type"] == "error"
        assert seen[-1]["error"]["code"] == "rate_limited"
        assert ws.close_code == 1008


async def test_the_endpoint_can_be_turned_off_and_ws_speaks_no_subprotocol() -> None:
    async with running_server(test_config(realtime={"enabled": False})) as srv:
        assert await status_of(srv.realtime_url) == 404
        async with connect(srv.url, subprotocols=[Subprotocol("realtime")]) as ws:
            assert ws.subprotocol is None

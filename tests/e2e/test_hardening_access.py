"""Hardening matrix, access: Origin list (403), tokens (401 at the handshake, 1008 after hello), caps per
process / IP / user (503 at the handshake, 1013 after hello), and the config that sets them."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server import cli
from server.auth import issue_token
from server.config import ServerOptions, parse_config
from tests.client import Client, running_server, test_config
from tests.rawws import open_raw, open_tcp
from vocab.errors import ConfigError

SECRET = "s" * 40
JWT = {"mode": "jwt", "secret": SECRET, "secret_env": None}


def token(user: str = "alice", ttl_s: float = 60, secret: str = SECRET, **claims: Any) -> str:
    if claims:
        now = int(time.time())
        return jwt.encode({"sub": user, "exp": now + int(ttl_s), **claims}, secret, algorithm="HS256")
    return issue_token(secret.encode(), user, ttl_s=ttl_s)


async def refused(url: str, **kwargs: Any) -> tuple[int, dict[str, Any], Any]:
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, **kwargs):
            pass
    resp = info.value.response
    return resp.status_code, json.loads(resp.body) if resp.body.startswith(b"{") else {}, resp.headers


async def closed_after_hello(
    url: str, hello: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with connect(url, **kwargs) as ws:
        await ws.send(json.dumps({"type": "hello", "protocol": 1, **(hello or {})}))
        err = json.loads(await ws.recv())
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert ws.close_code is not None
        return ws.close_code, err


async def serves(url: str, **kwargs: Any) -> str:
    async with Client.connect(url, **kwargs) as c:
        await c.send({"type": "ping", "id": 1})
        await c.recv_type("pong")
        return str(c.ready["session"])


# ---------------------------------------------------------------- origin


async def test_bad_origin_403() -> None:
    config = test_config(auth={"allowed_origins": ["https://app.example.com"]})
    async with running_server(config) as srv:
        status, _, _ = await refused(srv.url, origin="https://evil.example.net")
        assert status == 403
        await serves(srv.url, origin="https://app.example.com")
        await serves(srv.url)  # no Origin header: not a browser; allowed by default


async def test_missing_origin_can_be_refused_too() -> None:
    config = test_config(auth={"allowed_origins": ["https://app.example.com"], "allow_missing_origin": False})
    async with running_server(config) as srv:
        status, _, _ = await refused(srv.url)
        assert status == 403
        await serves(srv.url, origin="https://app.example.com")


async def test_by_default_only_the_servers_own_page_may_open_a_session() -> None:
    """With ``allowed_origins`` unset, a browser's Origin must be the server's own (the Host it asked for): any
    other web page (cross-site WebSocket hijacking) gets 403. Clients that send no Origin are not browsers."""
    async with running_server(test_config()) as srv:
        own = f"http://127.0.0.1:{srv.port}"
        for other in (
            "https://evil.example",
            f"http://127.0.0.1:{srv.port + 1}",
            "http://127.0.0.1",  # port 80: another server of this host
            "null",
        ):
            status, body, _ = await refused(srv.url, origin=other)
            assert (status, body.get("code")) == (403, "bad_origin"), other
        await serves(srv.url, origin=own)
        await serves(srv.url)
    async with running_server(test_config(auth={"allowed_origins": ["*"]})) as srv:
        await serves(srv.url, origin="https://evil.example")  # any origin, when the config says so


async def http_get(port: int, path: str, host: str) -> int:
    reader, writer = await open_tcp(port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return int(reply.split(b" ", 2)[1])


async def test_bound_beyond_loopback_the_http_routes_answer_only_known_host_names() -> None:
    """DNS rebinding: a page at evil.example whose name now points at this server reads ``/metrics`` with
    ``Host: evil.example``. Bound beyond loopback, only IP literals, localhost, the machine's own names and
    ``server.allowed_hosts`` are answered; others get 403, the WebSocket handshake too."""
    async with running_server(test_config(server={"host": "0.0.0.0"})) as srv:
        for host in ("evil.example", f"evil.example:{srv.port}", "localhost.evil.example"):
            assert await http_get(srv.port, "/metrics", host) == 403, host
            assert await http_get(srv.port, "/", host) == 403, host
        for host in (f"127.0.0.1:{srv.port}", "localhost", f"localhost:{srv.port}", f"[::1]:{srv.port}", "192.0.2.2"):
            assert await http_get(srv.port, "/metrics", host) == 200, host
        raw = await open_raw(srv.port, headers={"Host": "evil.example"}, hello=False)
        assert raw.status == 403
        await raw.close()
    config = test_config(server={"host": "0.0.0.0", "allowed_hosts": ["voice.example.com", "*.corp.example"]})
    async with running_server(config) as srv:
        assert await http_get(srv.port, "/healthz", "voice.example.com") == 200
        assert await http_get(srv.port, "/healthz", "a.corp.example:443") == 200
        assert await http_get(srv.port, "/healthz", "evil.example") == 403
    async with running_server(test_config()) as srv:  # on loopback (behind a proxy, say): any Host by default
        assert await http_get(srv.port, "/healthz", "voice.example.com") == 200
    async with running_server(test_config(server={"allowed_hosts": ["localhost"]})) as srv:  # unless configured
        assert await http_get(srv.port, "/healthz", "evil.example") == 403
        assert await http_get(srv.port, "/healthz", f"localhost:{srv.port}") == 200


# ---------------------------------------------------------------- tokens


async def test_bad_token_401_at_the_handshake() -> None:
    async with running_server(test_config(auth=JWT)) as srv:
        tampered = token("alice").split(".")
        tampered[1] = jwt.utils.base64url_encode(b'{"sub":"root","exp":9999999999}').decode()
        for bad in ("not-a-jwt", token(secret="t" * 40), ".".join(tampered)):
            status, body, headers = await refused(srv.url, additional_headers={"Authorization": f"Bearer {bad}"})
            assert status == 401
            assert body["code"] == "unauthorized"
            assert headers["WWW-Authenticate"] == "Bearer"
        status, body, _ = await refused(srv.url + "?token=garbage")
        assert status == 401


async def test_expired_token_401() -> None:
    async with running_server(test_config(auth=JWT)) as srv:
        status, body, _ = await refused(srv.url, additional_headers={"Authorization": f"Bearer {token(ttl_s=-60)}"})
        assert status == 401
        assert "expired" in body["message"]


async def test_token_without_subject_or_expiry_401() -> None:
    no_sub = jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256")
    no_exp = jwt.encode({"sub": "bob"}, SECRET, algorithm="HS256")
    alg_none = jwt.encode({"sub": "bob", "exp": int(time.time()) + 60}, "", algorithm="none")
    async with running_server(test_config(auth=JWT)) as srv:
        for bad in (no_sub, no_exp, alg_none):
            status, _, _ = await refused(srv.url, additional_headers={"Authorization": f"Bearer {bad}"})
            assert status == 401


@pytest.mark.parametrize("where", ["header", "hello"])
async def test_a_session_ends_when_its_token_expires(where: str) -> None:
    """A JWT's ``exp`` holds during the session, not only at its start: when it passes (plus ``leeway_s``), the
    session ends with ``error token_expired`` and close 1008, busy or not."""
    async with running_server(test_config(auth={**JWT, "leeway_s": 0})) as srv:
        short = token(ttl_s=2)  # exp is whole seconds: it passes 1-2 s from now
        exp = jwt.decode(short, options={"verify_signature": False})["exp"]
        kwargs: dict[str, Any] = (
            {"additional_headers": {"Authorization": f"Bearer {short}"}}
            if where == "header"
            else {"hello": {"token": short}}
        )
        async with Client.connect(srv.url, **kwargs) as c:
            await c.send({"type": "say", "text": " ".join(["word"] * 40)})  # busy: 4 s of speech
            with pytest.raises(ConnectionClosed):
                while True:
                    await c.recv(5)
            assert time.time() >= exp - 0.05  # not before the token's end
            assert time.time() < exp + 1.0
            errors = [m for m in c.received if m["type"] == "error"]
            assert [(e["code"], e["fatal"]) for e in errors] == [("token_expired", True)]
            assert c.ws.close_code == 1008
            assert not [m for m in c.received if m["type"] == "turn_end"]  # cut off mid-turn


async def test_good_token_by_header_query_or_hello() -> None:
    async with running_server(test_config(auth=JWT)) as srv:
        await serves(srv.url, additional_headers={"Authorization": f"Bearer {token()}"})
        await serves(f"{srv.url}?token={token()}")
        await serves(srv.url, hello={"token": token()})


async def test_bad_token_in_hello_closes_1008() -> None:
    async with running_server(test_config(auth=JWT)) as srv:
        code, err = await closed_after_hello(srv.url, {"token": token(ttl_s=-60)})
        assert code == 1008
        assert err["code"] == "unauthorized"
        assert err["fatal"] is True


async def test_missing_token_closes_1008_after_hello() -> None:
    async with running_server(test_config(auth=JWT)) as srv:
        code, err = await closed_after_hello(srv.url)
        assert (code, err["code"]) == (1008, "unauthorized")
        assert not srv.sessions


async def test_token_required_at_the_handshake_401() -> None:
    async with running_server(test_config(auth={**JWT, "require_at_handshake": True})) as srv:
        status, _, _ = await refused(srv.url)
        assert status == 401
        await serves(srv.url, additional_headers={"Authorization": f"Bearer {token()}"})


async def test_static_token_list() -> None:
    auth = {"mode": "tokens", "tokens": {"k" * 24: "kiosk-1", "m" * 24: "mobile"}}
    async with running_server(test_config(auth=auth)) as srv:
        await serves(srv.url, additional_headers={"Authorization": f"Bearer {'k' * 24}"})
        await serves(srv.url, hello={"token": "m" * 24})
        status, _, _ = await refused(srv.url, additional_headers={"Authorization": f"Bearer {'k' * 23}x"})
        assert status == 401
        code, _ = await closed_after_hello(srv.url, {"token": "nope"})
        assert code == 1008


async def test_issuer_and_audience_are_checked_when_configured() -> None:
    auth = {**JWT, "issuer": "voxpipe-test", "audience": "voice"}
    async with running_server(test_config(auth=auth)) as srv:
        good = token(iss="voxpipe-test", aud="voice")
        await serves(srv.url, additional_headers={"Authorization": f"Bearer {good}"})
        for bad in (token(), token(iss="other", aud="voice"), token(iss="voxpipe-test", aud="other")):
            status, _, _ = await refused(srv.url, additional_headers={"Authorization": f"Bearer {bad}"})
            assert status == 401


# ---------------------------------------------------------------- caps


async def test_session_cap_503() -> None:
    async with running_server(test_config(server={"max_sessions": 2})) as srv:
        async with Client.connect(srv.url), Client.connect(srv.url):
            status, body, headers = await refused(srv.url)
            assert status == 503
            assert body["code"] == "server_full"
            assert headers["Retry-After"]
        await serves(srv.url)  # the slots free up when sessions end


async def test_per_ip_cap_503_counts_connections_before_hello() -> None:
    async with running_server(test_config(limits={"max_sessions_per_ip": 2})) as srv:
        async with connect(srv.url), Client.connect(srv.url):  # one without hello, one with
            status, body, _ = await refused(srv.url)
            assert (status, body["code"]) == (503, "too_many_sessions")
        await serves(srv.url)


async def test_connections_that_never_send_hello_do_not_fill_the_session_cap() -> None:
    """Connections still waiting for their hello are not sessions: many of them (here 10, the cap is 5) leave
    the session cap to clients that say hello."""
    config = test_config(server={"max_sessions": 5}, limits={"max_sessions_per_ip": None, "max_pending_per_ip": None})
    async with running_server(config) as srv:
        silent = [await open_raw(srv.port, hello=False) for _ in range(10)]
        try:
            assert all(raw.status == 101 for raw in silent)
            async with Client.connect(srv.url) as c:  # a real client still gets a session
                await c.send({"type": "ping", "id": 1})
                await c.recv_type("pong")
        finally:
            for raw in silent:
                await raw.close()


async def test_connections_waiting_for_hello_have_their_own_cap_and_a_short_timeout() -> None:
    config = test_config(
        server={"max_pending_hellos": 3}, limits={"max_sessions_per_ip": None, "max_pending_per_ip": None}
    )
    async with running_server(config) as srv:
        silent = [await open_raw(srv.port, hello=False) for _ in range(3)]
        try:
            status, body, _ = await refused(srv.url)
            assert (status, body["code"]) == (503, "server_full")
            assert "waiting for their hello" in body["message"]
            await silent[0].send_msg({"type": "hello", "protocol": 1})  # one says hello: a slot frees up
            assert (await silent[0].read_msg())["type"] == "ready"
            await serves(srv.url)
        finally:
            for raw in silent:
                await raw.close()
    assert ServerOptions().hello_timeout_s <= 5.0


async def test_connections_waiting_for_hello_are_capped_per_address() -> None:
    config = test_config(limits={"max_sessions_per_ip": None, "max_pending_per_ip": 2})
    async with running_server(config) as srv:
        silent = [await open_raw(srv.port, hello=False) for _ in range(2)]
        try:
            status, body, _ = await refused(srv.url)
            assert (status, body["code"]) == (503, "too_many_sessions")
            assert "waiting for their hello" in body["message"]
        finally:
            for raw in silent:
                await raw.close()
        await serves(srv.url)


async def test_per_user_cap_503_at_the_handshake_and_1013_after_hello() -> None:
    config = test_config(auth=JWT, limits={"max_sessions_per_user": 1})
    async with running_server(config) as srv:
        headers = {"Authorization": f"Bearer {token('alice')}"}
        async with Client.connect(srv.url, additional_headers=headers):
            status, body, _ = await refused(srv.url, additional_headers=headers)
            assert (status, body["code"]) == (503, "too_many_sessions")
            code, err = await closed_after_hello(srv.url, {"token": token("alice")})  # token only in hello
            assert (code, err["code"]) == (1013, "too_many_sessions")
            await serves(srv.url, hello={"token": token("bob")})  # another user is fine
        await serves(srv.url, additional_headers=headers)


async def test_client_ip_from_a_trusted_proxy_header() -> None:
    limits = {"max_sessions_per_ip": 1, "client_ip_header": "X-Forwarded-For"}
    async with running_server(test_config(limits=limits)) as srv:
        first = {"X-Forwarded-For": "198.51.100.7, 203.0.113.1"}
        async with Client.connect(srv.url, additional_headers=first):
            status, _, _ = await refused(srv.url, additional_headers={"X-Forwarded-For": "203.0.113.1"})
            assert status == 503  # same client address, as the proxy (rightmost entry) saw it
            await serves(srv.url, additional_headers={"X-Forwarded-For": "203.0.113.2"})
    untrusted = {**limits, "trusted_proxies": ["10.0.0.1"]}
    async with running_server(test_config(limits=untrusted)) as srv:
        async with Client.connect(srv.url, additional_headers={"X-Forwarded-For": "203.0.113.1"}):
            status, _, _ = await refused(srv.url, additional_headers={"X-Forwarded-For": "203.0.113.2"})
            assert status == 503  # the header is ignored: the peer (127.0.0.1) is not a trusted proxy


async def test_draining_server_refuses_new_handshakes_503() -> None:
    async with running_server() as srv:
        srv.accepting = False
        status, body, _ = await refused(srv.url)
        assert (status, body["code"]) == (503, "shutting_down")
        srv.accepting = True


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"auth": {"mode": "jwt", "secrett": "x"}}, "auth.secrett: unknown key"),
        ({"auth": {"mode": "oauth"}}, "auth.mode: 'oauth' is not one of"),
        ({"auth": {"mode": "tokens"}}, "auth.tokens: mode 'tokens' needs at least one token"),
        ({"auth": {"mode": "tokens", "tokens": {"short": "u"}}}, "shorter than 16 characters"),
        ({"auth": {"allowed_origins": ["https://a.example/"]}}, "auth.allowed_origins"),
        ({"limits": {"messages_per_s": 0}}, "limits.messages_per_s: must be > 0"),
        ({"limits": {"idle_timeout": 5}}, "limits.idle_timeout: unknown key"),
        ({"limits": {"max_sessions_per_ip": 0}}, "limits.max_sessions_per_ip: must be >= 1"),
        ({"limits": {"trusted_proxies": "127.0.0.1"}}, "limits.trusted_proxies: expected a list"),
    ],
)
def test_bad_auth_and_limits_config_names_the_key(sections: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(test_config(**sections))
    assert message in info.value.message


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"mode": "jwt", "secret_env": None}, "needs a secret"),
        ({"mode": "jwt", "secret": "short", "secret_env": None}, "at least 32 bytes"),
    ],
)
async def test_jwt_without_a_usable_secret_refuses_to_start(auth: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        async with running_server(test_config(auth=auth)):
            pass
    assert message in info.value.message


async def test_jwt_secret_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXPIPE_TEST_SECRET", "e" * 32)
    auth = {"mode": "jwt", "secret_env": "VOXPIPE_TEST_SECRET"}
    async with running_server(test_config(auth=auth)) as srv:
        await serves(srv.url, hello={"token": token(secret="e" * 32)})


async def test_voxpipe_token_cli_issues_a_token_the_server_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXPIPE_JWT_SECRET", "c" * 40)
    config = test_config(auth={"mode": "jwt", "issuer": "ops"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert cli.main(["token", "--config", str(path), "--user", "carol", "--ttl-s", "60"]) == 0
    issued = capsys.readouterr().out.strip()
    claims = jwt.decode(issued, "c" * 40, algorithms=["HS256"], issuer="ops")
    assert claims["sub"] == "carol"
    assert 55 <= claims["exp"] - time.time() <= 61
    async with running_server(config) as srv:
        await serves(srv.url, additional_headers={"Authorization": f"Bearer {issued}"})
    monkeypatch.delenv("VOXPIPE_JWT_SECRET")
    assert cli.main(["token", "--config", str(path), "--user", "carol"]) == 2  # no secret: a config error
    assert "needs a secret" in capsys.readouterr().err

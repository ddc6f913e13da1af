"""server/admission.py without sockets: the handshake gate (401/503), per-IP and per-user caps, proxies."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from server.admission import Admission
from server.auth import Authenticator, AuthOptions, origin_allowed, same_host
from transports.limits import LimitOptions
from vocab.errors import ProtocolError

TOKENS = {"a" * 16: "alice", "b" * 16: "bob"}


@dataclass(eq=False)  # hashed by identity, as a connection is
class Peer:
    """What admission reads of a websockets connection."""

    remote_address: tuple[str, int]
    request: Request | None = None


def request(path: str = "/ws", **headers: str) -> Request:
    return Request(path, Headers(list(headers.items())))


def admission(
    *, accepting: bool = True, max_sessions: int = 10, auth: AuthOptions | None = None, **limits: Any
) -> Admission:
    return Admission(
        Authenticator(auth or AuthOptions()),
        LimitOptions(**limits),
        max_sessions=max_sessions,
        accepting=lambda: accepting,
    )


def refusal(response: Any) -> tuple[int, str]:
    assert response is not None
    return response.status_code, json.loads(response.body)["code"]


def test_open_server_lets_a_connection_in_and_counts_it() -> None:
    gate = admission()
    peer = Peer(("10.0.0.1", 5000), request())
    assert gate.check_handshake(peer, request()) is None
    with gate.connection(peer) as ticket:
        assert ticket.ip == "10.0.0.1"
        assert gate.connections == 1
        assert gate.per_ip["10.0.0.1"] == 1
    assert gate.connections == 0
    assert "10.0.0.1" not in gate.per_ip


def test_a_draining_server_refuses_with_503() -> None:
    assert refusal(admission(accepting=False).check_handshake(Peer(("1.1.1.1", 1)), request())) == (
        503,
        "shutting_down",
    )


def test_the_process_and_per_ip_caps() -> None:
    gate = admission(max_sessions=2, max_sessions_per_ip=1)
    first = Peer(("10.0.0.1", 1), request())
    with gate.connection(first) as ticket:
        gate.session_opened(ticket)
        assert refusal(gate.check_handshake(Peer(("10.0.0.1", 2)), request())) == (503, "too_many_sessions")
        other = Peer(("10.0.0.2", 1), request())
        assert gate.check_handshake(other, request()) is None
        with gate.connection(other) as second:
            assert gate.check_handshake(Peer(("10.0.0.3", 1)), request()) is None  # still waiting for its hello
            gate.session_opened(second)
            assert refusal(gate.check_handshake(Peer(("10.0.0.3", 1)), request())) == (503, "server_full")


def test_connections_waiting_for_hello_have_caps_of_their_own() -> None:
    gate = admission(max_sessions=5, max_sessions_per_ip=None, max_pending_per_ip=2)
    gate.max_pending = 3
    with contextlib.ExitStack() as stack:
        tickets = [stack.enter_context(gate.connection(Peer((f"10.0.0.{i % 2}", i), request()))) for i in range(3)]
        assert (gate.connections, gate.pending) == (3, 3)
        response = gate.check_handshake(Peer(("10.0.0.9", 1)), request())
        assert refusal(response) == (503, "server_full")  # three waiting: the cap for waiting connections
        gate.session_opened(tickets[1])  # 10.0.0.1 has a session now; 10.0.0.0 still has two waiting
        assert gate.pending == 2
        assert gate.check_handshake(Peer(("10.0.0.9", 1)), request()) is None
        assert refusal(gate.check_handshake(Peer(("10.0.0.0", 9)), request())) == (503, "too_many_sessions")
        gate.session_opened(tickets[1])  # once only
        assert gate.pending == 2
    assert (gate.connections, gate.pending) == (0, 0)
    assert not gate.pending_per_ip


def test_tokens_at_the_handshake_or_in_hello_and_the_per_user_cap() -> None:
    gate = admission(auth=AuthOptions(mode="tokens", tokens=TOKENS), max_sessions_per_user=1)
    peer = Peer(("10.0.0.1", 1), request())
    assert refusal(gate.check_handshake(peer, request(Authorization="Bearer wrong-token-0000"))) == (
        401,
        "unauthorized",
    )
    with gate.connection(peer) as ticket:  # no token yet: hello must bring one
        with pytest.raises(ProtocolError) as missing:
            gate.admit_user(ticket, None)
        assert (missing.value.code, missing.value.close_code) == ("unauthorized", 1008)
        assert gate.admit_user(ticket, "a" * 16).user == "alice"
        second = Peer(("10.0.0.2", 1), request())
        with gate.connection(second) as other:
            with pytest.raises(ProtocolError) as full:
                gate.admit_user(other, "a" * 16)  # alice already has her one session
            assert (full.value.code, full.value.close_code) == ("too_many_sessions", 1013)
            assert gate.admit_user(other, "b" * 16).user == "bob"
    assert not gate.per_user


def test_the_client_ip_header_is_trusted_only_from_a_trusted_proxy() -> None:
    gate = admission(client_ip_header="X-Forwarded-For", trusted_proxies=["127.0.0.1"])
    forwarded = request(**{"X-Forwarded-For": "203.0.113.9, 198.51.100.7"})
    assert gate.client_ip(Peer(("127.0.0.1", 1)), forwarded) == "198.51.100.7"  # the entry the proxy added
    assert gate.client_ip(Peer(("10.9.9.9", 1)), forwarded) == "10.9.9.9"  # anyone else: the peer address


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8765", "127.0.0.1:8765", True),
        ("https://voice.example.com", "voice.example.com", True),  # behind a TLS proxy that passes Host
        ("http://voice.example.com", "voice.example.com:80", True),
        ("http://127.0.0.1:3000", "127.0.0.1:8765", False),  # another server of the same host
        ("http://127.0.0.1", "127.0.0.1:8765", False),
        ("https://evil.example", "127.0.0.1:8765", False),
        ("null", "127.0.0.1:8765", False),
        ("file://", "127.0.0.1:8765", False),
        ("http://[::1]:8765", "[::1]:8765", True),
        ("http://x:99999", "x:99999", False),
    ],
)
def test_same_host_origins(origin: str, host: str, same: bool) -> None:
    assert same_host(origin, host) is same


def test_the_origin_check_by_default_and_configured() -> None:
    default = AuthOptions()
    assert origin_allowed("http://h:1", "h:1", default)
    assert not origin_allowed("http://evil:1", "h:1", default)
    assert origin_allowed(None, "h:1", default)  # not a browser
    assert not origin_allowed(None, "h:1", AuthOptions(allow_missing_origin=False))
    assert origin_allowed("http://evil:1", "h:1", AuthOptions(allowed_origins=["*"]))
    listed = AuthOptions(allowed_origins=["https://app.example.com"])
    assert origin_allowed("https://app.example.com", "h:1", listed)
    assert not origin_allowed("http://h:1", "h:1", listed)  # a list replaces the same-host rule

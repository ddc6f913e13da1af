"""transports/connection.py without sockets: hello, limits, bye and every close decision, on a fake clock."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from transports import messages as m
from transports.connection import MAX_HELLO_ATTEMPTS, Close, Connection
from transports.limits import LimitOptions
from transports.wire import decode_server
from vocab.errors import ProtocolError

HELLO = {"type": "hello", "protocol": 1, "audio_in": {"rate": 16000}, "audio_out": {"rate": 16000}}
READY = m.Ready(session="s1", graph=[], audio_in=m.AudioFormat(), audio_out=m.AudioFormat())


def connection(now: float = 0.0, **limits: Any) -> Connection:
    return Connection(limits=LimitOptions(**limits), hello_timeout_s=10.0, max_frame_bytes=1 << 20, now=now)


def sent(conn: Connection) -> list[dict[str, Any]]:
    return [decode_server(frame) for frame in conn.data_to_send()]


def opened(now: float = 0.0, *, framing: str = "json", busy: bool = False, **limits: Any) -> Connection:
    conn = connection(now, **limits)
    frame: bytes | str = json.dumps(HELLO) if framing == "json" else msgpack.packb(HELLO)
    [hello] = conn.receive(frame, now)
    assert isinstance(hello, m.Hello)
    conn.accept([READY], in_rate_hz=16000, busy=lambda: busy, now=now)
    assert [x["type"] for x in sent(conn)] == ["ready"]
    return conn


def test_a_valid_hello_is_handed_over_and_ready_goes_out_in_its_framing() -> None:
    conn = connection()
    [hello] = conn.receive(msgpack.packb(HELLO), 0.0)
    assert isinstance(hello, m.Hello)
    phases = [conn.phase]
    conn.accept([READY], in_rate_hz=16000, busy=lambda: False, now=0.0)
    phases.append(conn.phase)
    [frame] = conn.data_to_send()
    assert isinstance(frame, bytes)  # msgpack hello -> msgpack replies
    assert msgpack.unpackb(frame)["type"] == "ready"
    assert phases == ["hello", "open"]


def test_a_first_message_that_is_not_hello_closes_1002() -> None:
    conn = connection()
    assert conn.receive(json.dumps({"type": "text", "text": "hi"}), 0.0) == []
    [error] = sent(conn)
    assert (error["code"], error["fatal"]) == ("not_hello", True)
    assert conn.close == Close(1002, "first message must be hello")
    assert conn.receive(json.dumps(HELLO), 0.0) == []  # nothing more once closing


def test_garbage_as_a_first_frame_is_not_hello() -> None:
    conn = connection()
    conn.receive(b"\xc1", 0.0)
    assert sent(conn)[0]["code"] == "not_hello"
    assert conn.close is not None
    assert conn.close.code == 1002


def test_a_hello_with_a_bad_field_may_be_retried_a_few_times() -> None:
    conn = connection()
    bad = json.dumps({**HELLO, "protocol": "one"})
    for _ in range(MAX_HELLO_ATTEMPTS - 1):
        assert conn.receive(bad, 0.0) == []
        [error] = sent(conn)
        assert (error["code"], error["fatal"]) == ("bad_field", False)
        assert conn.close is None
    conn.receive(bad, 0.0)
    assert conn.close is not None
    assert conn.close.code == 1002


def test_a_refused_hello_fatal_or_not() -> None:
    conn = connection()
    conn.receive(json.dumps(HELLO), 0.0)
    conn.refuse(ProtocolError("unknown_stage", "no such stage"))
    assert sent(conn)[0]["fatal"] is False
    assert conn.close is None
    conn.refuse(ProtocolError("server_full", "full", fatal=True, close_code=1013))
    assert sent(conn)[0]["code"] == "server_full"
    assert conn.close == Close(1013, "full")


def test_the_hello_timeout() -> None:
    conn = connection(now=100.0)
    assert conn.deadline() == 110.0
    conn.timeout(109.0)
    assert conn.close is None
    conn.timeout(110.0)
    assert sent(conn)[0]["code"] == "hello_timeout"
    assert conn.close == Close(1008, "hello timeout")
    assert conn.deadline() is None


def test_messages_and_non_fatal_errors_go_to_the_session() -> None:
    conn = opened()
    assert conn.receive(json.dumps({"type": "text", "text": "hi"}), 1.0) == [m.Text(text="hi")]
    [err] = conn.receive(json.dumps({"type": "dance"}), 1.0)
    assert isinstance(err, ProtocolError)
    assert err.code == "unknown_type"
    [long] = conn.receive(json.dumps({"type": "say", "text": "x" * 5000}), 1.0)
    assert isinstance(long, ProtocolError)
    assert long.code == "too_long"
    assert conn.close is None


def test_bye_closes_1000_after_the_session_got_it() -> None:
    conn = opened()
    assert conn.receive(json.dumps({"type": "bye"}), 1.0) == [m.Bye()]
    assert conn.close == Close(1000, "bye")


def test_a_message_flood_closes_1008_with_the_error_first() -> None:
    conn = opened(messages_per_s=10, messages_burst=3)
    ping = json.dumps({"type": "ping"})
    for _ in range(3):
        assert conn.receive(ping, 1.0) == [m.Ping()]
    assert conn.receive(ping, 1.0) == []
    [error] = sent(conn)
    assert (error["code"], error["fatal"]) == ("rate_limited", True)
    assert conn.close is not None
    assert conn.close.code == 1008


def test_audio_faster_than_the_budget_closes_1008() -> None:
    conn = opened(audio_max_realtime=2.0, audio_burst_s=1.0, max_text_chars=None)
    second = msgpack.packb({"type": "audio", "data": bytes(32000)})
    taken = [conn.receive(second, 1.0) for _ in range(40)]
    assert conn.close is not None
    assert conn.close.code == 1008
    assert sum(1 for t in taken if t) < 40


def test_idle_time_closes_unless_a_turn_is_in_progress() -> None:
    busy = opened(now=0.0, busy=True, idle_timeout_s=5.0, max_session_s=None)
    busy.timeout(6.0)
    assert busy.close is None  # the agent is talking: looked at again later
    idle = opened(now=0.0, idle_timeout_s=5.0, max_session_s=None)
    assert idle.deadline() == 5.0
    idle.receive(json.dumps({"type": "ping"}), 3.0)
    assert idle.deadline() == 8.0
    idle.timeout(8.0)
    assert sent(idle)[-1]["code"] == "idle_timeout"
    assert idle.close is not None
    assert idle.close.code == 1008


def test_the_maximum_session_length() -> None:
    conn = opened(now=0.0, idle_timeout_s=None, max_session_s=60.0)
    conn.timeout(60.0)
    assert sent(conn)[-1]["code"] == "max_duration"
    assert conn.close is not None


def test_a_slow_reader_closes_1008_with_nothing_more_sent() -> None:
    conn = opened()
    conn.receive(json.dumps({"type": "dance"}), 1.0)
    conn.stalled(10.0)
    assert conn.data_to_send() == []
    assert conn.close is not None
    assert conn.close.code == 1008


@pytest.mark.parametrize("framing", ["json", "msgpack"])
def test_server_messages_encode_in_the_hellos_framing(framing: str) -> None:
    conn = opened(framing=framing)
    [frame] = conn.encode(m.Pong(id=1))
    assert isinstance(frame, str if framing == "json" else bytes)
    assert decode_server(frame) == {"type": "pong", "id": 1}


def test_a_message_that_cannot_be_encoded_is_dropped_and_counted_not_raised() -> None:
    conn = opened(framing="msgpack")
    assert conn.encode(m.Pong(id=2**70)) == []  # beyond msgpack's 64-bit integers: a bug, never fatal


def test_the_token_expiry_closes_1008_even_while_busy() -> None:
    conn = opened(busy=True, idle_timeout_s=100.0, max_session_s=None)
    conn.expire_at(30.0)
    assert conn.deadline() == 30.0
    conn.timeout(29.9)
    assert conn.close is None
    conn.timeout(30.0)
    [error] = sent(conn)
    assert (error["code"], error["fatal"]) == ("token_expired", True)
    assert conn.close is not None
    assert conn.close.code == 1008


def test_no_expiry_leaves_the_other_deadlines() -> None:
    conn = opened(idle_timeout_s=100.0, max_session_s=None)
    conn.expire_at(None)
    assert conn.deadline() == 100.0
    conn.expire_at(500.0)
    assert conn.deadline() == 100.0


def test_an_input_is_charged_by_the_stage_the_ready_names() -> None:
    """The limiter learns the graph from the opening ``ready`` (numbered or not): bytes for the LLM are text."""
    graph = [m.GraphNode("vad", "energy", "audio", "speech"), m.GraphNode("llm", "echo", "text", "text")]
    ready = m.Ready(session="s1", graph=graph, audio_in=m.AudioFormat(), audio_out=m.AudioFormat())
    for opening in ([ready], [m.Sequenced(1, ready)]):
        conn = connection(max_text_chars=5)
        conn.receive(json.dumps(HELLO), 0.0)
        conn.accept(opening, in_rate_hz=16000, busy=lambda: False, now=0.0)
        [err] = conn.receive(msgpack.packb({"type": "input", "stage": "llm", "data": b"123456"}), 0.0)
        assert isinstance(err, ProtocolError)
        assert err.code == "too_long"

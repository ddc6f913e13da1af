"""transports/wire.py: every client message decodes in both framings; bad input is only ProtocolError."""

from __future__ import annotations

import json
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transports import messages as m
from transports.wire import Framing, decode, decode_server, encode, encode_map
from vocab.errors import ProtocolError


@pytest.fixture(params=[Framing.MSGPACK, Framing.JSON], ids=["msgpack", "json"])
def framing(request: pytest.FixtureRequest) -> Framing:
    return request.param  # type: ignore[no-any-return]


def code_of(frame: bytes | str) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    return info.value.code


def test_hello_decodes_with_nested_formats(framing: Framing) -> None:
    frame = encode_map(
        {
            "type": "hello",
            "protocol": 1,
            "audio_in": {"format": "pcm16", "rate": 48000, "channels": 1, "aec": False},
            "audio_out": {"format": "pcm16", "rate": 24000},
            "subscribe": ["asr", "tts"],
            "session": {"system_prompt": "be brief", "voice": "joe"},
        },
        framing,
    )
    hello = decode(frame)
    assert isinstance(hello, m.Hello)
    assert hello.audio_in == m.AudioFormat("pcm16", 48000, 1, False)
    assert hello.audio_out.rate == 24000
    assert hello.subscribe == ["asr", "tts"]
    assert hello.session == m.SessionOptions(system_prompt="be brief", voice="joe")


def test_audio_bytes_roundtrip(framing: Framing) -> None:
    pcm = bytes(range(256)) * 4
    msg = decode(encode_map({"type": "audio", "data": pcm}, framing))
    assert msg == m.Audio(data=pcm)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"type": "text", "text": "hi"}, m.Text("hi")),
        ({"type": "say", "text": "hello"}, m.Say("hello")),
        ({"type": "input", "stage": "llm", "data": "hey"}, m.Input(data="hey", stage="llm")),
        ({"type": "input", "entry": 2, "data": "hey"}, m.Input(data="hey", entry=2)),
        ({"type": "commit"}, m.Commit()),
        ({"type": "interrupt"}, m.Interrupt()),
        ({"type": "played", "turn": 3, "ms": 120}, m.Played(turn=3, ms=120.0)),
        ({"type": "ping", "id": 7}, m.Ping(id=7)),
        ({"type": "ping"}, m.Ping()),
        ({"type": "bye"}, m.Bye()),
        ({"type": "text", "text": "x", "extra_field": 1}, m.Text("x")),
    ],
)
def test_client_messages(framing: Framing, fields: dict[str, object], expected: object) -> None:
    assert decode(encode_map(fields, framing)) == expected


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\xc1", "bad_frame"),
        (b"\x93\x01", "bad_frame"),  # truncated array
        ("{not json", "bad_frame"),
        ('{"type": "ping", "id": NaN}', "bad_frame"),
        ('{"type": "ping", "id": Infinity}', "bad_frame"),
        ("[1, 2]", "bad_message"),
        (msgpack.packb([1, 2]), "bad_message"),
        (msgpack.packb("hello"), "bad_message"),
        ('{"text": "no type"}', "bad_message"),
        ('{"type": 5}', "bad_message"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": "text"}', "bad_field"),
        ('{"type": "text", "text": 5}', "bad_field"),
        ('{"type": "played", "turn": "1", "ms": 1}', "bad_field"),
        ('{"type": "played", "turn": true, "ms": 1}', "bad_field"),
        ('{"type": "audio", "data": "***not base64***"}', "bad_field"),
        (msgpack.packb({"type": "audio", "data": "text, not bin"}), "bad_field"),
        (msgpack.packb({"type": "audio", "data": msgpack.ExtType(5, b"x")}), "bad_frame"),
        (msgpack.packb({1: 2, "type": "ping"}), "bad_frame"),  # non-string map key
        ('{"type": "hello", "protocol": 1, "audio_in": 16000}', "bad_field"),
        ('{"type": "input", "data": [1, 2]}', "bad_field"),
    ],
)
def test_bad_frames_are_typed_errors(frame: bytes | str, code: str) -> None:
    assert code_of(frame) == code


def test_deep_nesting_is_a_typed_error() -> None:
    assert code_of("[" * 100_000 + "]" * 100_000) == "bad_frame"
    deep = b"\x91" * 100_000 + b"\xc0"
    assert code_of(deep) in ("bad_frame", "bad_message")


def test_server_messages_encode_in_both_framings(framing: Framing) -> None:
    ready = m.Ready(
        session="s1",
        graph=[m.GraphNode("llm", "echo", "text", "text")],
        audio_in=m.AudioFormat(rate=16000),
        audio_out=m.AudioFormat(rate=24000),
    )
    data = decode_server(encode(ready, framing))
    assert data["graph"] == [{"name": "llm", "engine": "echo", "in": "text", "out": "text"}]
    assert data["protocol"] == 1
    assert data["audio_out"]["rate"] == 24000
    audio = decode_server(encode(m.AudioOut(stage="tts", turn=2, seq=5, data=b"\x01\x02"), framing))
    assert audio == {"type": "audio", "stage": "tts", "turn": 2, "seq": 5, "data": b"\x01\x02"}
    metrics = decode_server(encode(m.Metrics(turn=1, first_output_ms={"llm": 12.5}), framing))
    assert metrics == {"type": "metrics", "turn": 1, "first_output_ms": {"llm": 12.5}}  # None fields omitted


def test_json_text_frames_are_compact_utf8() -> None:
    frame = encode(m.Reply(stage="llm", turn=1, text="héllo"), Framing.JSON)
    assert isinstance(frame, str)
    assert json.loads(frame)["text"] == "héllo"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError as exc:
        assert exc.code in {"bad_frame", "bad_message", "unknown_type", "bad_field"}


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_raises_only_protocol_errors(text: str) -> None:
    try:
        decode(text)
    except ProtocolError as exc:
        assert exc.code in {"bad_frame", "bad_message", "unknown_type", "bad_field"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["hello", "audio", "text", "say", "input", "played", "ping", "commit", "webrtc_offer"]),
    st.dictionaries(
        st.sampled_from(
            ["protocol", "audio_in", "data", "text", "stage", "entry", "turn", "ms", "id", "subscribe", "sdp"]
        ),
        json_values,
        max_size=5,
    ),
)
def test_mutated_messages_raise_only_protocol_errors(kind: str, fields: dict[str, object]) -> None:
    for frame in (json.dumps({"type": kind, **fields}), msgpack.packb({"type": kind, **fields})):
        try:
            msg = decode(frame)
        except ProtocolError as exc:
            assert exc.code in {"bad_frame", "bad_message", "unknown_type", "bad_field"}
        else:
            assert msg.type == kind
            for value in vars(msg).values() if hasattr(msg, "__dict__") else ():
                assert not (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------- integers (issue 13 #2)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


@pytest.mark.parametrize(
    "frame",
    [
        '{"type":"played","turn":1,"ms":' + "9" * 400 + "}",  # a float field: math.isfinite raised OverflowError
        '{"type":"played","turn":' + "9" * 400 + ',"ms":1}',
        '{"type":"ping","id":' + "9" * 400 + "}",
        '{"type":"ping","id":' + str(2**64) + "}",
        '{"type":"input","entry":' + str(INT64_MIN - 1) + ',"data":"hi"}',
        msgpack.packb({"type": "ping", "id": 2**64 - 1}),  # msgpack's uint64: beyond signed 64 bits
        msgpack.packb({"type": "played", "turn": 2**63, "ms": 1}),
        msgpack.packb({"type": "played", "turn": 1, "ms": 2**64 - 1}),
    ],
    ids=[
        "json_float_field",
        "json_int_field",
        "json_ping_id",
        "json_ping_id_2e64",
        "json_below_int64",
        "msgpack_uint64_ping_id",
        "msgpack_int_field",
        "msgpack_float_field",
    ],
)
def test_integers_beyond_signed_64_bits_are_a_bad_field(frame: bytes | str) -> None:
    assert code_of(frame) == "bad_field"


def test_integers_at_the_signed_64_bit_bounds_decode(framing: Framing) -> None:
    for value in (INT64_MIN, INT64_MAX):
        assert decode(encode_map({"type": "ping", "id": value}, framing)) == m.Ping(id=value)
        assert decode(encode_map({"type": "played", "turn": value, "ms": value}, framing)).turn == value


def test_encoding_an_integer_beyond_signed_64_bits_fails_in_both_codecs(framing: Framing) -> None:
    """The bound holds on the way out too: a server message never carries what a client cannot read."""
    assert decode_server(encode(m.Pong(id=INT64_MAX), framing))["id"] == INT64_MAX
    for value in (INT64_MAX + 1, INT64_MIN - 1, 10**400):
        with pytest.raises(ValueError, match="64-bit"):
            encode(m.Pong(id=value), framing)
        with pytest.raises(ValueError, match="64-bit"):
            encode(m.Error(code="x", message="y", turn=value), framing)

"""Hardening matrix, message level: every bad message gets ``error`` with ``fatal: false`` and the session
still answers the next valid message (a ``ping`` gets its ``pong``)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from tests.client import Client, running_server, silence, test_config, tone
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio


async def survives(c: Client, frame: bytes | str, code: str) -> dict[str, Any]:
    """Send ``frame``; expect a non-fatal ``error`` with ``code``, then a pong to a ping."""
    await c.send_raw(frame)
    err = await c.recv_type("error", timeout=5)
    assert err["code"] == code, err
    assert err["fatal"] is False
    await c.send({"type": "ping", "id": 42})
    assert (await c.recv_type("pong", timeout=5))["id"] == 42
    return err


def nested_map(depth: int) -> bytes:
    """A msgpack map nested ``depth`` deep, built by hand (msgpack.packb would recurse too)."""
    return b"\x81\xa1a" * depth + b"\xc0"


CASES: list[tuple[str, bytes | str, str]] = [
    ("malformed_msgpack", b"\xc1\xc1\xc1", "bad_frame"),
    ("truncated_msgpack", msgpack.packb({"type": "text", "text": "hello world"})[:-4], "bad_frame"),
    ("msgpack_ext_type", b"\x82\xa4type\xa4ping\xa2id\xd4\x05\x00", "bad_frame"),
    ("msgpack_timestamp_ext", b"\x82\xa4type\xa4ping\xa2id\xd6\xff\x00\x00\x00\x01", "bad_field"),
    ("deeply_nested_map", nested_map(100_000), "bad_frame"),
    ("deeply_nested_json", '{"type":"ping","id":' + "[" * 100_000 + "]" * 100_000 + "}", "bad_frame"),
    ("huge_declared_array", b"\xdd\xff\xff\xff\xff", "bad_frame"),
    ("huge_declared_map", b"\xdf\xff\xff\xff\xff", "bad_frame"),
    ("huge_declared_bin", b"\x81\xa4type\xc6\xff\xff\xff\xff", "bad_frame"),
    ("non_map_top_level_msgpack", msgpack.packb([1, 2, 3]), "bad_message"),
    ("non_map_top_level_json", "[1, 2, 3]", "bad_message"),
    ("json_scalar", '"ping"', "bad_message"),
    ("map_without_type", msgpack.packb({"text": "hi"}), "bad_message"),
    ("non_string_type", msgpack.packb({"type": 7}), "bad_message"),
    ("non_string_map_key", b"\x82\xa4type\xa4ping\x01\x02", "bad_frame"),
    ("unknown_type", msgpack.packb({"type": "warp_drive"}), "unknown_type"),
    ("wrong_field_type_text", msgpack.packb({"type": "text", "text": 12}), "bad_field"),
    ("wrong_field_type_audio", msgpack.packb({"type": "audio", "data": "not bytes"}), "bad_field"),
    ("wrong_field_type_played", msgpack.packb({"type": "played", "turn": "1", "ms": 5}), "bad_field"),
    ("bool_as_int", msgpack.packb({"type": "played", "turn": True, "ms": 5}), "bad_field"),
    ("missing_field", msgpack.packb({"type": "say"}), "bad_field"),
    ("map_as_ping_id", msgpack.packb({"type": "ping", "id": {"a": 1}}), "bad_field"),
    ("bad_base64_json", '{"type":"audio","data":"***"}', "bad_field"),
    ("nan_in_json", '{"type":"played","turn":1,"ms":NaN}', "bad_frame"),
    ("infinity_in_json", '{"type":"played","turn":1,"ms":Infinity}', "bad_frame"),
    ("overflow_to_inf_in_json", '{"type":"played","turn":1,"ms":1e999}', "bad_field"),
    ("huge_integer_json", '{"type":"played","turn":' + "9" * 5000 + ',"ms":1}', "bad_frame"),
    ("inf_ping_id_json", '{"type":"ping","id":1e999}', "bad_field"),
    ("nan_ping_id_msgpack", msgpack.packb({"type": "ping", "id": float("nan")}), "bad_field"),
    ("lone_surrogate_json", '{"type":"text","text":"hi \\ud800 there"}', "bad_frame"),
    ("lone_surrogate_ping_id", '{"type":"ping","id":"\\udfff"}', "bad_frame"),
    ("invalid_utf8_msgpack_str", b"\x82\xa4type\xa4text\xa4text\xa2\xff\xfe", "bad_frame"),
    ("negative_played_ms", msgpack.packb({"type": "played", "turn": 1, "ms": -5}), "bad_field"),
    ("input_without_target", msgpack.packb({"type": "input", "data": "hi"}), "bad_field"),
    ("input_unknown_stage", msgpack.packb({"type": "input", "stage": "x" * 500, "data": "hi"}), "unknown_stage"),
    ("input_entry_out_of_range", msgpack.packb({"type": "input", "entry": 2**63 - 1, "data": "hi"}), "unknown_stage"),
    ("input_entry_beyond_int64", msgpack.packb({"type": "input", "entry": 2**63, "data": "hi"}), "bad_field"),
    ("integer_400_digits_in_a_float_field", '{"type":"played","turn":1,"ms":' + "9" * 400 + "}", "bad_field"),
    ("ping_id_beyond_int64_json", '{"type":"ping","id":' + str(2**70) + "}", "bad_field"),
    ("empty_text", msgpack.packb({"type": "text", "text": "   "}), "bad_field"),
    ("long_ping_id", msgpack.packb({"type": "ping", "id": "x" * 100_000}), "bad_field"),
    ("text_over_the_limit", msgpack.packb({"type": "say", "text": "word " * 2000}), "too_long"),
]


@pytest.mark.parametrize("framing", ["msgpack", "json"])
async def test_bad_messages_get_a_non_fatal_error_and_the_session_goes_on(framing: str) -> None:
    """One session takes every case in a row, in either reply framing (input framing is per frame)."""
    async with running_server() as srv, Client.connect(srv.url, framing=framing) as c:
        for name, frame, code in CASES:
            err = await survives(c, frame, code)
            assert isinstance(err["message"], str), name
            assert 0 < len(err["message"]) < 400, (name, err["message"])  # client input is never echoed whole
        await c.send({"type": "text", "text": "still here"})
        msgs = await c.turn()
        assert msgs[-1]["type"] == "turn_end"


@pytest.mark.parametrize(("name", "frame", "code"), CASES, ids=[case[0] for case in CASES])
async def test_each_bad_message_alone(name: str, frame: bytes | str, code: str) -> None:
    async with running_server() as srv, Client.connect(srv.url, framing="json") as c:
        await survives(c, frame, code)


async def test_odd_length_audio() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        err = await survives(c, msgpack.packb({"type": "audio", "data": b"\x01\x02\x03"}), "bad_audio")
        assert "3 bytes" in err["message"]


async def test_empty_audio() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        await survives(c, msgpack.packb({"type": "audio", "data": b""}), "bad_audio")
        await survives(c, json.dumps({"type": "audio", "data": ""}), "bad_audio")


async def test_audio_at_the_wrong_rate_size_still_makes_a_turn() -> None:
    """Chunks of any even size (7 ms, 333 samples, one of 1.5 s) are re-framed by the VAD: no error."""
    async with running_server() as srv, Client.connect(srv.url, hello={"audio_in": {"rate": 8000}}) as c:
        pcm = silence(100, 8000) + tone(600, 8000) + silence(400, 8000)
        sizes = [112, 666, 2, 24000]
        i = 0
        for n in sizes * 100:
            if i >= len(pcm):
                break
            await c.send({"type": "audio", "data": pcm[i : i + n]})
            i += n
        msgs = await c.turn()
        assert not [x for x in msgs if x["type"] == "error"]
        assert msgs[-1]["type"] == "turn_end"
        assert any(x["type"] == "transcript" and x["final"] for x in msgs)


async def test_hello_twice() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        first = c.ready["session"]
        await survives(c, msgpack.packb({"type": "hello", "protocol": 1}), "duplicate_hello")
        await c.send({"type": "text", "text": "same session"})
        msgs = await c.turn()
        assert msgs[-1]["type"] == "turn_end"
        assert srv.sessions.keys() == {first}


async def test_messages_after_bye_are_ignored_and_the_close_is_1000() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        await c.send_raw(msgpack.packb({"type": "bye"}))
        for i in range(20):
            await c.send({"type": "ping", "id": i})
            await c.send({"type": "say", "text": "too late"})
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            while True:
                msg = await c.recv(5)
                assert msg["type"] not in ("pong", "audio", "turn_end"), msg
        assert c.ws.close_code == 1000
        # the server discards what follows bye, so the client's close reply is not stuck behind it
        assert time.monotonic() - started < 1.0
        await wait_until(lambda: not srv.sessions, 1.0)


async def test_text_limit_is_configurable_and_off_with_null() -> None:
    text = "word " * 2000
    async with running_server(test_config(limits={"max_text_chars": None})) as srv, Client.connect(srv.url) as c:
        await c.send({"type": "input", "stage": "llm", "data": text})
        await c.send({"type": "interrupt"})
        assert not [x for x in await c.quiet(0.3) if x["type"] == "error"]
    async with running_server(test_config(limits={"max_text_chars": 10})) as srv, Client.connect(srv.url) as c:
        await survives(c, msgpack.packb({"type": "input", "stage": "llm", "data": "eleven chars"}), "too_long")


async def test_hello_with_a_huge_system_prompt_is_refused_not_fatal() -> None:
    async with running_server() as srv, Client.connect(srv.url, send_hello=False) as c:
        await c.send({"type": "hello", "protocol": 1, "session": {"system_prompt": "x" * 5000}})
        err = await c.recv_type("error")
        assert err["code"] == "too_long"
        assert err["fatal"] is False
        await c.hello(session={"system_prompt": "Be brief."})
        assert c.ready["session"]


# ---------------------------------------------------------------- integers beyond 64 bits (issue 13 #2)

HUGE = "9" * 400  # under json's 4,300-digit limit, far over 64 bits


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("framing", ["msgpack", "json"])
async def test_a_400_digit_integer_in_a_json_frame_is_a_bad_field(
    framing: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server() as srv, Client.connect(srv.url, framing=framing) as c:
        for frame in (
            '{"type":"played","turn":1,"ms":' + HUGE + "}",
            '{"type":"played","turn":' + HUGE + ',"ms":1}',
            '{"type":"ping","id":' + HUGE + "}",
        ):
            await survives(c, frame, "bad_field")
    no_errors_logged(caplog)


async def test_a_json_ping_id_beyond_64_bits_on_a_msgpack_session_is_a_bad_field(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pong would echo the id into msgpack, which cannot hold it: refused on the way in, and the session
    (its outbox) goes on answering."""
    async with running_server() as srv, Client.connect(srv.url, framing="msgpack") as c:
        err = await survives(c, '{"type":"ping","id":' + str(2**70) + "}", "bad_field")
        assert "ping.id" in err["message"]
        await survives(c, msgpack.packb({"type": "ping", "id": 2**64 - 1}), "bad_field")
        await c.send({"type": "say", "text": "still here"})
        assert (await c.turn())[-1]["type"] == "turn_end"
    no_errors_logged(caplog)


@pytest.mark.parametrize(
    "frame",
    ['{"type":"played","turn":1,"ms":' + HUGE + "}", '{"type":"ping","id":' + str(2**70) + "}"],
    ids=["huge_float_field", "huge_ping_id"],
)
async def test_a_huge_integer_as_the_first_frame_is_not_hello_and_1002(
    frame: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_server() as srv, Client.connect(srv.url, send_hello=False) as c:
        await c.send_raw(frame)
        err = await c.recv_type("error")
        assert (err["code"], err["fatal"]) == ("not_hello", True)
        with pytest.raises(ConnectionClosed):
            await c.recv()
        assert c.ws.close_code == 1002
    no_errors_logged(caplog)


async def test_a_hello_with_a_huge_integer_is_a_bad_field_and_may_be_retried() -> None:
    async with running_server() as srv, Client.connect(srv.url, send_hello=False) as c:
        await c.send_raw('{"type":"hello","protocol":' + HUGE + "}")
        err = await c.recv_type("error")
        assert (err["code"], err["fatal"]) == ("bad_field", False)
        await c.hello()
        assert c.ready["session"]


# ---------------------------------------------------------------- the text limit, whatever the framing (issue 13 #3)


@pytest.mark.parametrize("target", [{"stage": "llm"}, {"stage": "tts"}, {"entry": 2}, {"entry": 3}])
async def test_binary_input_to_a_text_stage_obeys_the_text_limit(target: dict[str, Any]) -> None:
    """A ``bin`` ``input.data`` for the LLM or TTS is text once decoded: over ``max_text_chars`` it is refused with
    ``too_long`` and makes no turn (the next turn is still turn 1)."""
    async with running_server() as srv, Client.connect(srv.url) as c:
        too_long = ("word " * 1000).encode()  # 5,000 characters, over the default 4,000
        err = await survives(c, msgpack.packb({"type": "input", "data": too_long, **target}), "too_long")
        assert "4000" in err["message"]
        await c.send({"type": "say", "text": "short"})
        msgs = await c.turn()
        assert msgs[-1] == {**msgs[-1], "type": "turn_end", "turn": 1}, msgs[-1]
        assert not [m for m in c.received if m["type"] in ("reply", "transcript") and m.get("turn") != 1]


async def test_json_input_audio_is_not_text_and_spends_the_audio_budget() -> None:
    """The reverse of the same rule: base64 audio in a JSON ``input`` for the VAD is audio, not text: longer
    than ``max_text_chars`` it is fine, and flooding it runs out the audio budget (1008) as ``audio`` would."""
    config = test_config(
        server={"max_frame_bytes": 65536},  # the audio burst is at least one max-size frame: 2 s here
        limits={"audio_max_realtime": 2.0, "audio_burst_s": 1.0, "max_text_chars": 100},
    )
    async with running_server(config) as srv, Client.connect(srv.url, framing="json") as c:
        half_s = silence(500)  # 16,000 bytes: 21,334 base64 characters
        await c.send({"type": "input", "stage": "vad", "data": half_s})
        await c.send({"type": "ping", "id": 1})
        assert not [m for m in await c.recv_until(lambda m: m["type"] == "pong") if m["type"] == "error"]
        with pytest.raises(ConnectionClosed):
            for _ in range(20):  # 10 s of audio at once: far over 2x real time
                await c.send({"type": "input", "stage": "vad", "data": half_s})
            while True:
                await c.recv()
        assert c.ws.close_code == 1008
        errors = [m for m in c.received if m["type"] == "error"]
        assert errors[-1]["code"] == "rate_limited", errors

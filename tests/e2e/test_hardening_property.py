"""Property test: random and mutated frames fed to a live session.

The server runs in this test's event loop; hypothesis drives a synchronous client from a worker thread.
For every example: the server answers only with server message types of the contract, the fuzzed session
still answers a ping (unless the frames said ``bye``), a bystander session keeps its round trips short,
and nothing is logged at ERROR (a handler that raised, a message that could not be encoded).
The strategies draw integers of every size (past 64 bits, up to 400 digits in JSON), bytes where text is
expected and text where bytes are expected. ``VOXPIPE_PROPERTY_EXAMPLES`` sets the number of examples
(500 in CI; about 40,000 make 100,000 frames, run by hand under the heavy-run lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as sync_connect

from tests.client import Client, running_server, test_config
from transports.connection import ENCODE_FAILURES_TOTAL
from transports.messages import CLIENT_MESSAGES
from transports.wire import decode_server, server_message_types

SERVER_TYPES = set(server_message_types())
CLIENT_TYPES = [cls.type for cls in CLIENT_MESSAGES]
FIELDS = ["type", "data", "text", "id", "turn", "ms", "stage", "entry", "protocol", "token", "subscribe", "session"]

EXAMPLES = int(os.environ.get("VOXPIPE_PROPERTY_EXAMPLES", "500"))

# edge values drawn often on purpose: they are where decoders and echoes break
special = st.sampled_from(
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        1e308,
        2**63 - 1,
        2**63,  # one past signed 64 bits: msgpack's uint64 range
        2**64 - 1,
        2**64,  # past msgpack: only JSON carries it
        -(2**63),
        -(2**63) - 1,
        10**400,  # under json's 4,300-digit limit
        0,
        -1,
        "",
        "\ud800",
        "a\udfffb",
        "\x00",
    ]
)
scalars = (
    special
    | st.none()
    | st.booleans()
    | st.integers()  # every size
    | st.integers(min_value=2**62, max_value=2**66)
    | st.integers(min_value=-(2**66), max_value=-(2**62))
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=64)
)
huge_ints = st.sampled_from([2**63, 2**64 - 1, 2**64, -(2**63) - 1, 10**400, -(10**400)]) | st.integers(
    min_value=2**63, max_value=10**500
)
# a text over max_text_chars (4,000), as a string or as bytes
long_text = st.integers(4001, 4100).map(lambda n: "w" * n)
values = special | st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)

TEMPLATES: list[dict[str, Any]] = [
    {"type": "audio", "data": b"\x00\x01" * 160},
    {"type": "text", "text": "hello there"},
    {"type": "say", "text": "one two"},
    {"type": "input", "stage": "tts", "data": "three"},
    {"type": "input", "entry": 1, "data": b"\x00\x00" * 80},
    {"type": "input", "stage": "llm", "data": b"bytes for the LLM"},
    {"type": "input", "entry": 0, "data": "text for the VAD"},
    {"type": "commit"},
    {"type": "interrupt"},
    {"type": "played", "turn": 1, "ms": 20.0},
    {"type": "ping", "id": 7},
    {"type": "hello", "protocol": 1, "audio_in": {"format": "pcm16", "rate": 16000, "channels": 1}},
]


def _json_safe(msg: dict[str, Any]) -> dict[str, Any]:
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in msg.items()}


@st.composite
def frames(draw: st.DrawFn) -> bytes | str:
    kind = draw(
        st.sampled_from(
            ["raw_binary", "raw_text", "mutated", "field_swap", "field_swap", "random_map", "type_swap", "big_int"]
        )
    )
    if kind == "raw_binary":
        return draw(st.binary(max_size=300))
    if kind == "raw_text":
        return draw(st.text(max_size=300))
    msg = dict(draw(st.sampled_from(TEMPLATES)))
    as_json = draw(st.booleans())
    if kind == "field_swap":
        own = [k for k in msg if k != "type"]
        use_own = bool(own) and draw(st.integers(0, 3)) > 0  # mostly a field the message really has
        key = draw(st.sampled_from(own if use_own else FIELDS))
        msg[key] = draw(values)
    elif kind == "big_int":  # an integer past signed 64 bits in one of the message's own fields (or a new one)
        own = [k for k in msg if k != "type"] or ["id"]
        msg[draw(st.sampled_from(own))] = draw(huge_ints)
    elif kind == "type_swap":  # bytes where text is expected, text where bytes are (msgpack keeps the kinds apart)
        for key, value in list(msg.items()):
            if key == "type":
                continue
            if isinstance(value, bytes):
                msg[key] = draw(st.text(max_size=60) | long_text)
            elif isinstance(value, str):
                msg[key] = draw(
                    st.binary(max_size=60) | st.text(max_size=60).map(str.encode) | long_text.map(str.encode)
                )
        as_json = False
    elif kind == "random_map":
        msg = draw(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), values, max_size=6))
        if draw(st.booleans()):
            msg["type"] = draw(st.sampled_from(CLIENT_TYPES) | st.text(max_size=12))
    try:
        encoded: bytes | str = (
            json.dumps(_json_safe(msg), allow_nan=True) if as_json else msgpack.packb(msg, use_bin_type=True)
        )
    except (TypeError, ValueError, OverflowError):
        encoded = msgpack.packb(repr(msg))
    if kind != "mutated":
        return encoded
    data = bytearray(encoded.encode("utf-8", "surrogatepass") if isinstance(encoded, str) else encoded)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif data:
            del data[pos]
    if isinstance(encoded, str):
        return data.decode("utf-8", "replace")
    return bytes(data)


class Fuzzer:
    """The synchronous client side of one fuzzed session, run in a worker thread by hypothesis;
    ``json_hello`` picks the reply framing (the frames sent are of both kinds either way)."""

    def __init__(self, url: str, *, json_hello: bool) -> None:
        self.url = url
        self.json_hello = json_hello
        self.ws: ClientConnection | None = None
        self._stack: contextlib.ExitStack | None = None
        self.examples = 0
        self.frames = 0
        self.reconnects = 0
        self.seen: dict[str, int] = {}
        self.ping_id = 0

    def connect(self) -> ClientConnection:
        self.close()
        self._stack = contextlib.ExitStack()
        ws = self._stack.enter_context(sync_connect(self.url, max_size=None, open_timeout=5))
        hello = {"type": "hello", "protocol": 1}
        ws.send(json.dumps(hello) if self.json_hello else msgpack.packb(hello))
        assert decode_server(ws.recv(timeout=5))["type"] == "ready"
        return ws

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def read_until_pong(self, ws: ClientConnection, ping_id: str) -> None:
        deadline = time.monotonic() + 10
        while True:
            msg = decode_server(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
            kind = msg.get("type")
            assert kind in SERVER_TYPES, f"unknown server message type {kind!r}"
            self.seen[kind] = self.seen.get(kind, 0) + 1
            if kind == "error":
                assert msg["fatal"] is False, msg
            if kind == "pong" and msg.get("id") == ping_id:
                return

    def run(self, batch: list[bytes | str]) -> None:
        self.examples += 1
        self.frames += len(batch)
        ws = self.ws = self.ws or self.connect()
        said_bye = False
        try:
            for frame in batch:
                ws.send(frame)
            ws.send(msgpack.packb({"type": "interrupt"}))  # keep turns from piling up between examples
            self.ping_id += 1
            ping_id = f"p{self.ping_id}"
            ws.send(msgpack.packb({"type": "ping", "id": ping_id}))
            self.read_until_pong(ws, ping_id)
        except ConnectionClosed:
            said_bye = any(_says_bye(f) for f in batch)
            assert said_bye, f"closed {ws.close_code} {ws.close_reason!r} without a bye"
            assert ws.close_code == 1000
            self.ws = None
            self.reconnects += 1


def _says_bye(frame: bytes | str) -> bool:
    try:
        obj = json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame)
    except Exception:
        return False
    return isinstance(obj, dict) and obj.get("type") == "bye"


class ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_random_and_mutated_frames_never_crash_or_confuse_the_server() -> None:
    config = test_config(
        limits={"messages_per_s": None, "audio_max_realtime": None},
        pipeline=[
            {"name": "vad", "engine": "energy", "start_ms": 60, "end_ms": 200},
            {"name": "asr", "engine": "duration_asr"},
            {"name": "llm", "engine": "echo", "delay_ms": 1},
            {"name": "tts", "engine": "tone", "word_ms": 20, "gap_ms": 0},
        ],
    )
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    encode_failures = ENCODE_FAILURES_TOTAL.get()
    try:
        async with running_server(config) as srv, Client.connect(srv.url) as bystander:
            fuzzers = [Fuzzer(srv.url, json_hello=False), Fuzzer(srv.url, json_hello=True)]

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(st.sampled_from(fuzzers), st.lists(frames(), min_size=1, max_size=4))
            def property_(fuzzer: Fuzzer, batch: list[bytes | str]) -> None:
                fuzzer.run(batch)

            worst_rtt_s = 0.0
            fuzzing = asyncio.create_task(asyncio.to_thread(property_))
            started = time.monotonic()
            while not fuzzing.done():
                sent = time.monotonic()
                await bystander.send({"type": "ping", "id": "b"})
                await bystander.recv_type("pong", timeout=5)
                worst_rtt_s = max(worst_rtt_s, time.monotonic() - sent)
                await asyncio.sleep(0.05)
            await fuzzing
            elapsed_s = time.monotonic() - started
            for fuzzer in fuzzers:
                await asyncio.to_thread(fuzzer.close)  # a blocking close; the server runs in this loop
                assert fuzzer.examples >= 0.3 * EXAMPLES
                assert fuzzer.seen.get("error", 0) > 0.2 * EXAMPLES  # the frames really were bad, mostly
            fuzzed = sum(f.frames for f in fuzzers)
            seen: dict[str, int] = {}
            for fuzzer in fuzzers:
                for kind, count in fuzzer.seen.items():
                    seen[kind] = seen.get(kind, 0) + count
            print(
                f"\n{sum(f.examples for f in fuzzers)} examples, {fuzzed} fuzzed frames in {elapsed_s:.1f} s "
                f"({fuzzed / elapsed_s:.0f} frames/s); {sum(f.reconnects for f in fuzzers)} reconnects after bye; "
                f"bystander worst round trip {worst_rtt_s * 1000:.0f} ms; answers: {dict(sorted(seen.items()))}"
            )
            assert sum(f.examples for f in fuzzers) >= EXAMPLES
            assert worst_rtt_s < 1.0, f"the bystander waited {worst_rtt_s:.2f} s for a pong"
            assert elapsed_s < 30 * max(1.0, EXAMPLES / 500)
            await bystander.send({"type": "say", "text": "all good"})
            assert (await bystander.turn())[-1]["type"] == "turn_end"
    finally:
        logging.getLogger().removeHandler(errors)
    assert not [r.getMessage() for r in errors.records]
    assert ENCODE_FAILURES_TOTAL.get() == encode_failures

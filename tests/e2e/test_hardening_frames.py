"""Hardening matrix, frame and handshake level: what a raw socket can throw before any message is decoded.

Every case ends with a well-behaved client getting a normal answer from the same server: no crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import pytest

from tests.client import Client, running_server, test_config
from tests.rawws import OP_BINARY, OP_PING, OP_TEXT, frame_bytes, open_raw, open_tcp
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio


async def still_serves(url: str) -> None:
    async with Client.connect(url) as c:
        await c.send({"type": "ping", "id": "alive"})
        assert (await c.recv_type("pong"))["id"] == "alive"


async def test_oversize_frame_closes_1009() -> None:
    async with running_server(test_config(server={"max_frame_bytes": 4096})) as srv:
        raw = await open_raw(srv.port)
        await raw.send_frame(OP_BINARY, b"\x80" * 5000)
        assert await raw.read_close_code() == 1009
        await still_serves(srv.url)


async def test_oversize_declared_length_closes_1009_without_reading_it() -> None:
    """A header announcing 1 TiB: refused on the header, nothing is allocated or awaited."""
    async with running_server() as srv:
        raw = await open_raw(srv.port)
        raw.writer.write(frame_bytes(OP_BINARY, b"", declared_len=1 << 40))
        started = time.monotonic()
        assert await raw.read_close_code() == 1009
        assert time.monotonic() - started < 2
        await still_serves(srv.url)


async def test_oversize_fragmented_message_closes_1009() -> None:
    async with running_server(test_config(server={"max_frame_bytes": 4096})) as srv:
        raw = await open_raw(srv.port)
        await raw.send_frame(OP_BINARY, b"\x80" * 3000, fin=False)
        await raw.send_frame(0x0, b"\x00" * 3000, fin=True)  # continuation: 6000 bytes in all
        assert await raw.read_close_code() == 1009


async def test_invalid_utf8_text_frame_closes_1007() -> None:
    async with running_server() as srv:
        raw = await open_raw(srv.port)
        await raw.send_frame(OP_TEXT, b'{"type": "ping", "id": "\xff\xfe"}')
        assert await raw.read_close_code() == 1007
        await still_serves(srv.url)


@pytest.mark.parametrize(
    "frame",
    [
        frame_bytes(OP_BINARY, b"\x80", masked=False),  # clients must mask
        bytes([0x80 | 0x40 | OP_BINARY]) + frame_bytes(OP_BINARY, b"\x80")[1:],  # RSV1 without an extension
        frame_bytes(OP_PING, b"x" * 200),  # control frames are at most 125 bytes
        frame_bytes(OP_PING, b"x", fin=False),  # control frames cannot be fragmented
        frame_bytes(0x3, b"x"),  # reserved opcode
        frame_bytes(0x0, b"x"),  # continuation with nothing to continue
    ],
    ids=["unmasked", "rsv1", "long_ping", "fragmented_ping", "reserved_opcode", "stray_continuation"],
)
async def test_bad_framing_closes_1002(frame: bytes) -> None:
    async with running_server() as srv:
        raw = await open_raw(srv.port)
        raw.writer.write(frame)
        assert await raw.read_close_code() == 1002
        await still_serves(srv.url)


async def test_raw_tcp_garbage_does_not_crash() -> None:
    async with running_server(test_config(server={"open_timeout_s": 1.0})) as srv:
        for garbage in (os.urandom(4096), b"\x16\x03\x01\x02\x00" + os.urandom(512), b"\r\n" * 3000):
            reader, writer = await open_tcp(srv.port)
            writer.write(garbage)
            reply = await asyncio.wait_for(reader.read(), 5)  # an HTTP error or nothing, then EOF
            assert reply == b"" or reply.startswith(b"HTTP/1.1 4")
            writer.close()
        await still_serves(srv.url)


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400),  # no key
        (
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            400,  # RFC 6455 suggests 426; websockets answers 400 with the reason
        ),
        (b"POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", None),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n", None),
        (b"GET /ws HTTP/1.1\r\n" + b"X-Many: 1\r\n" * 500 + b"\r\n", None),
        (b"GET /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", None),
    ],
    ids=["no_key", "bad_version", "post", "long_header", "many_headers", "huge_body"],
)
async def test_bad_handshake_does_not_crash(request_head: bytes, status: int | None) -> None:
    async with running_server() as srv:
        reader, writer = await open_tcp(srv.port)
        writer.write(request_head)
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        if status is not None:
            assert reply.startswith(f"HTTP/1.1 {status}".encode()), reply[:80]
        else:
            assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply[:80]
        await still_serves(srv.url)


async def test_slowloris_handshake_is_closed_by_the_open_timeout() -> None:
    async with running_server(test_config(server={"open_timeout_s": 1.0})) as srv:
        reader, writer = await open_tcp(srv.port)
        writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed_after = None
        while time.monotonic() - started < 5:
            try:
                writer.write(b"X-Drip: 1\r\n")  # one header line at a time, never the blank line
                await writer.drain()
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
            try:
                if await asyncio.wait_for(reader.read(1024), 0.2) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
        writer.close()
        assert closed_after is not None, "the server kept a handshake open past its open timeout"
        assert 0.8 <= closed_after < 2.5
        await still_serves(srv.url)


async def test_peer_that_never_hangs_up_after_a_failed_connection_is_aborted() -> None:
    """After a 1009 the server waits for the client's side of TCP; with pings off only our reaper ends it."""
    config = test_config(server={"max_frame_bytes": 4096, "ping_interval_s": None, "close_timeout_s": 0.5})
    async with running_server(config) as srv:
        raw = await open_raw(srv.port)
        assert len(srv.sessions) == 1
        await raw.send_frame(OP_BINARY, b"\x80" * 5000)
        assert await raw.read_close_code(hang_up=False) == 1009
        took_s = await wait_until(lambda: not srv.sessions, 5)  # the session outlived its failed connection?
        assert took_s < 2.5
        assert srv.admission.connections == 0
        assert await asyncio.wait_for(raw.reader.read(), 2) == b""  # the server hung up


# ---------------------------------------------------------------- HTTP routes: odd requests (issue 13 #9)


async def http_status(port: int, head: bytes) -> int:
    reader, writer = await open_tcp(port)
    writer.write(head)
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 "), reply[:80]
    return int(reply.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /%00 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),  # an embedded null byte in the file path
        (b"GET /a%00b.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
        (b"GET /" + b"a" * 300 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),  # a segment over NAME_MAX
        (b"GET /x/" + b"b" * 5000 + b".js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 404),
        (
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t0ken\r\n"
            b"Authorization: Bearer t0ken\r\n\r\n",
            401,
        ),  # two Authorization headers
        (b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer wrong\r\n\r\n", 401),
    ],
    ids=["null_byte", "null_byte_in_name", "long_segment", "long_nested_segment", "two_authorizations", "wrong"],
)
async def test_odd_http_requests_get_their_status_and_log_no_error(
    request_head: bytes, status: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXPIPE_TEST_METRICS_TOKEN", "t0ken")
    async with running_server(test_config(server={"metrics_token_env": "VOXPIPE_TEST_METRICS_TOKEN"})) as srv:
        assert await http_status(srv.port, request_head) == status
        ok = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t0ken\r\n\r\n"
        assert await http_status(srv.port, ok) == 200
        await still_serves(srv.url)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

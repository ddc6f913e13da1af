"""Hardening matrix, SIGTERM drain, against a real ``python -m server serve`` subprocess: new connections
are refused, the turn in flight finishes, sessions close with 1001, and a client that never answers the
close does not hold the shutdown past its bound."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.client import Client, running_server, test_config
from tests.rawws import OP_CLOSE, OP_TEXT, open_raw
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


async def start_server(config_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", "serve", "--config", str(config_path), "--port", "0",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    banner = ""
    while (found := re.search(r"ws://[^ )\s]+", banner)) is None:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)
        if not line:
            raise RuntimeError(f"the server exited: {banner}")
        banner += line.decode()
    return proc, found.group(0)


async def test_sigterm_drain(tmp_path: Path) -> None:
    config = test_config(server={"drain_timeout_s": 5.0, "close_timeout_s": 1.0})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    proc, url = await start_server(path)
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    try:
        deaf = await open_raw(port)  # a session that will never read nor answer the close
        deaf.stop_reading()
        async with Client.connect(url) as c:
            await c.send({"type": "say", "text": "one two three four five six seven eight"})  # 0.8 s of audio
            await c.recv_type("audio")
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            async def refused() -> bool:
                try:
                    async with connect(url, open_timeout=2):
                        return False
                except (OSError, InvalidStatus):
                    return True

            for _ in range(100):  # until the signal is handled: no longer accepting
                if await refused():
                    break
            else:
                raise AssertionError("still accepting connections after SIGTERM")
            with pytest.raises(ConnectionClosed):
                while True:
                    await c.recv(10)
            kinds = [x["type"] for x in c.received]
            assert kinds.count("turn_end") == 1  # the turn in flight finished before the close
            assert kinds.index("turn_end") > kinds.index("audio")
            assert c.ws.close_code == 1001
            assert c.ws.close_reason == "server shutting down"
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        # the turn (< 1 s), then the deaf client's bounded close (close_timeout_s + 1), then exit
        assert time.monotonic() - signalled < 5.0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigterm_with_no_turn_in_flight_exits_at_once(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(test_config(server={"drain_timeout_s": 30.0})))
    proc, url = await start_server(path)
    try:
        async with Client.connect(url) as c:
            proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            going = await c.recv(10)
            assert (going["type"], going["code"], going["fatal"]) == ("error", "going_away", True)
            with pytest.raises(ConnectionClosed):
                await c.recv(10)
            assert c.ws.close_code == 1001
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert time.monotonic() - signalled < 3.0  # nothing to wait for: the drain deadline is not used
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_drain_is_bounded_when_a_client_stopped_reading() -> None:
    """websockets' own close waits for a full write buffer to drain; the drain must not wait on it."""
    config = test_config(server={"write_limit_bytes": 4096, "close_timeout_s": 0.5}, limits={"messages_per_s": None})
    async with running_server(config) as srv:
        raw = await open_raw(srv.port, rcvbuf=4096)
        raw.stop_reading()
        conn = next(iter(srv.ws_server.connections))
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        for _ in range(400):
            await raw.send_msg({"type": "ping", "id": "x" * 120})
        await wait_until(lambda: conn.transport.get_write_buffer_size() > 0, 2)  # the socket is full
        started = time.monotonic()
        await asyncio.wait_for(srv.drain(timeout_s=0), 10)
        assert time.monotonic() - started < 3.0
        assert not srv.sessions
        raw.reset()


async def test_drain_is_bounded_when_a_connection_is_stuck_closing() -> None:
    """A connection websockets failed (here 1002 for a close in the middle of a fragmented message) whose
    peer never hangs up: shutting the server down must not wait for a keepalive ping to end it."""
    server = running_server(test_config(server={"close_timeout_s": 0.5, "hello_timeout_s": 60.0}))
    srv = await server.__aenter__()
    try:
        raw = await open_raw(srv.port, hello=False)
        await raw.send_frame(OP_TEXT, b"fragment", fin=False)
        await raw.send_frame(OP_CLOSE, b"\x03\xe8")
        await raw.send_frame(0x0, b"more", fin=True)
        assert await raw.read_close_code(hang_up=False) == 1002
    finally:
        started = time.monotonic()
        await asyncio.wait_for(server.__aexit__(None, None, None), 30)
    assert time.monotonic() - started < 2.5  # was 20 s: until the keepalive ping
    assert srv.admission.connections == 0
    raw.reset()

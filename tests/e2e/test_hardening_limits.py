"""Hardening matrix, limits: floods, idle and max duration, slow readers; each ends with an ``error`` naming
the limit and close 1008, and never disturbs another session on the same server."""

from __future__ import annotations

import asyncio
import copy
import socket
import time
from typing import Any

import msgpack
import pytest
from websockets.exceptions import ConnectionClosed

from tests.client import TEST_PIPELINE, Client, running_server, silence, test_config, tone
from tests.rawws import OP_BINARY, frame_bytes, open_raw
from tests.waiting import wait_until
from transports.websocket import SLOW_READERS_TOTAL
from vocab.metrics import CLOSES_TOTAL

pytestmark = pytest.mark.asyncio


async def until_closed(c: Client, timeout: float = 5.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed):
        while True:
            out.append(await c.recv(timeout))
    return out


async def fatal_error(c: Client, timeout: float = 5.0) -> dict[str, Any]:
    errors = [x for x in await until_closed(c, timeout) if x["type"] == "error"]
    assert errors, "closed without an error"
    assert errors[-1]["fatal"] is True
    return errors[-1]


class Bystander:
    """A second session pinging every 20 ms: its worst round trip shows whether it was disturbed."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.worst_rtt_s = 0.0
        self.pongs = 0

    async def run(self) -> None:
        for i in range(1_000_000):
            started = time.monotonic()
            await self.client.send({"type": "ping", "id": i})
            await self.client.recv_type("pong", timeout=5)
            self.worst_rtt_s = max(self.worst_rtt_s, time.monotonic() - started)
            self.pongs += 1
            await asyncio.sleep(0.02)


async def test_message_flood_closes_1008() -> None:
    config = test_config(limits={"messages_per_s": 50, "messages_burst": 100})
    async with running_server(config) as srv, Client.connect(srv.url) as other:
        bystander = Bystander(other)
        watcher = asyncio.create_task(bystander.run())
        async with Client.connect(srv.url) as c:
            for i in range(300):
                await c.send({"type": "ping", "id": i})
            err = await fatal_error(c)
            assert err["code"] == "rate_limited"
            assert c.ws.close_code == 1008
            pongs = [x for x in c.received if x["type"] == "pong"]
            assert len(pongs) <= 120  # at most the burst and what the rate refilled (queued ones are dropped)
        await wait_until(lambda: bystander.pongs >= 5)  # the other session was served all along
        watcher.cancel()
        assert bystander.worst_rtt_s < 0.5
        assert len(srv.sessions) == 1


async def test_garbage_flood_counts_too() -> None:
    config = test_config(limits={"messages_per_s": 50, "messages_burst": 100})
    async with running_server(config) as srv, Client.connect(srv.url) as c:
        for _ in range(300):
            await c.send_raw(b"\xc1")
        err = await fatal_error(c)
        assert err["code"] == "rate_limited"
        assert c.ws.close_code == 1008


async def test_audio_flood_faster_than_twice_real_time_closes_1008() -> None:
    config = test_config(server={"max_frame_bytes": 16384}, limits={"audio_max_realtime": 2.0, "audio_burst_s": 1.0})
    async with running_server(config) as srv, Client.connect(srv.url) as c:
        await c.stream_audio(silence(5000), realtime=0)  # 5 s of audio at once
        err = await fatal_error(c)
        assert err["code"] == "rate_limited"
        assert "real time" in err["message"]
        assert c.ws.close_code == 1008


async def test_real_time_audio_is_not_a_flood() -> None:
    config = test_config(server={"max_frame_bytes": 16384}, limits={"audio_max_realtime": 2.0, "audio_burst_s": 1.0})
    async with running_server(config) as srv, Client.connect(srv.url) as c:
        await c.stream_audio(silence(200) + tone(600) + silence(1000), realtime=1.5)
        msgs = await c.turn()
        assert msgs[-1]["type"] == "turn_end"
        assert not [x for x in c.received if x["type"] == "error"]


async def test_idle_timeout() -> None:
    async with running_server(test_config(limits={"idle_timeout_s": 0.5})) as srv:
        # the server's idle clock starts during the handshake: a busy machine can spend 0.2 s of it before
        # connect() returns, so the lower bound counts from before the connect
        started = time.monotonic()
        async with Client.connect(srv.url) as c:
            err = await fatal_error(c)
            assert err["code"] == "idle_timeout"
            assert c.ws.close_code == 1008
            assert 0.45 <= time.monotonic() - started < 2.0


async def test_idle_timeout_waits_while_the_agent_speaks() -> None:
    async with running_server(test_config(limits={"idle_timeout_s": 0.5})) as srv, Client.connect(srv.url) as c:
        await c.send({"type": "say", "text": " ".join(["word"] * 15)})  # 1.5 s of speech, no client message
        msgs = await c.turn(timeout=5)
        assert msgs[-1]["type"] == "turn_end"
        assert not [x for x in msgs if x["type"] == "error"]
        err = await fatal_error(c)
        assert err["code"] == "idle_timeout"


async def test_max_duration() -> None:
    config = test_config(limits={"max_session_s": 1.0, "idle_timeout_s": 0.3})
    async with running_server(config) as srv, Client.connect(srv.url) as c:
        started = time.monotonic()

        async def keep_talking() -> None:
            for i in range(100):
                await c.send({"type": "ping", "id": i})
                await asyncio.sleep(0.1)

        talker = asyncio.create_task(keep_talking())
        try:
            err = await fatal_error(c)
        finally:
            talker.cancel()
        assert err["code"] == "max_duration"
        assert c.ws.close_code == 1008
        assert 0.95 <= time.monotonic() - started < 2.0


async def test_slow_reader_bounded_memory_then_close() -> None:
    """A client that never reads but keeps sending: the server's buffers stay bounded (pongs and errors
    are dropped past the control lane's bound, the socket's write buffer holds), then close 1008."""
    config = test_config(
        server={"write_limit_bytes": 4096, "close_timeout_s": 0.5},
        limits={"slow_reader_grace_s": 1.0, "messages_per_s": None},
    )
    async with running_server(config) as srv, Client.connect(srv.url) as other:
        bystander = Bystander(other)
        watcher = asyncio.create_task(bystander.run())
        slow_before = SLOW_READERS_TOTAL.get()
        closes_before = CLOSES_TOTAL.get(code="1008")
        raw = await open_raw(srv.port, rcvbuf=4096)
        raw.stop_reading()
        session = next(s for s in srv.sessions.values() if s.id != other.ready["session"])
        port = raw.writer.get_extra_info("sockname")[1]
        conn = next(ws for ws in srv.ws_server.connections if ws.remote_address[1] == port)
        # loopback autotunes socket buffers to megabytes; a small one stands for a slow network path
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        worst = {"control": 0, "write_buffer": 0}
        started = time.monotonic()
        for i in range(3000):  # pongs, and errors for the bad ones: never read
            await raw.send_msg({"type": "ping", "id": "x" * 120} if i % 2 else {"type": "nope"})
            worst["control"] = max(worst["control"], len(session.outbox._control))
            worst["write_buffer"] = max(worst["write_buffer"], conn.transport.get_write_buffer_size())
            if session.id not in srv.sessions:
                break
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        await wait_until(lambda: session.id not in srv.sessions, 5)
        took_s = time.monotonic() - started
        assert worst["control"] <= 256
        assert worst["write_buffer"] <= 4096 + 4096  # websockets' limit, plus one frame
        assert SLOW_READERS_TOTAL.get() == slow_before + 1
        assert CLOSES_TOTAL.get(code="1008") == closes_before + 1
        assert 1.0 <= took_s < 4.0  # the grace, then a bounded close (close_timeout_s + 1), then abort
        raw.resume_reading()
        assert await raw.read_close_code(timeout=5) in (1008, None)  # the close frame, or the abort
        watcher.cancel()
        assert bystander.worst_rtt_s < 0.5
        assert srv.sessions.keys() == {other.ready["session"]}


async def test_slow_reader_that_keeps_asking_for_turns_is_closed() -> None:
    """Turns block the session's message loop once the stages' queues are full (text is never dropped);
    the slow-reader timeout on the socket still frees everything and closes."""
    config = test_config(
        server={"write_limit_bytes": 4096, "close_timeout_s": 0.5},
        limits={"slow_reader_grace_s": 1.0, "messages_per_s": None},
        session={"stage_queue_items": 4, "outbox_max_items": 16},
    )
    async with running_server(config) as srv:
        raw = await open_raw(srv.port, rcvbuf=4096)
        raw.stop_reading()
        session = next(iter(srv.sessions.values()))
        port = raw.writer.get_extra_info("sockname")[1]
        conn = next(ws for ws in srv.ws_server.connections if ws.remote_address[1] == port)
        conn.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        started = time.monotonic()
        for _ in range(200):  # queued in our transport: the server stops reading once its queues are full
            raw.writer.write(frame_bytes(OP_BINARY, msgpack.packb({"type": "say", "text": "one two three four"})))
        await wait_until(lambda: session.id not in srv.sessions, 6)
        assert time.monotonic() - started < 4.5
        assert session.playhead.queued() <= 16
        assert all(q.qsize() <= 4 for q in session.graph.inboxes[1:])
        raw.reset()


async def test_an_uncommitted_speech_turn_at_the_asr_expires_after_max_utterance_ms() -> None:
    """``input`` to the ASR stage opens a speech turn that only ``commit`` ends. A client that never commits would
    keep the session busy (no idle timeout) for ever: the turn is committed after the stage's
    ``max_utterance_ms``, the agent answers, and then the idle timeout closes the session."""
    stages = copy.deepcopy(TEST_PIPELINE)
    stages[1] = {"name": "asr", "engine": "duration_asr", "max_utterance_ms": 1000}
    config = test_config(pipeline=stages, limits={"idle_timeout_s": 0.5})
    async with running_server(config) as srv, Client.connect(srv.url) as c:
        started = time.monotonic()
        await c.send({"type": "input", "stage": "asr", "data": tone(200)})
        msgs = await c.turn(timeout=5)
        assert msgs[-1]["type"] == "turn_end", msgs[-1]
        final = [m for m in msgs if m["type"] == "transcript" and m["final"]]
        assert final, [m["type"] for m in msgs]
        assert final[0]["text"].startswith("heard 200 milliseconds")
        assert 1.0 <= final[0]["_at"] - started < 2.0, final[0]["_at"] - started
        err = await fatal_error(c)
        assert err["code"] == "idle_timeout"
        assert c.ws.close_code == 1008

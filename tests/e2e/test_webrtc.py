"""WebRTC call-in: an aiortc client offers over the WebSocket, talks through a track, hears the agent's track.

Real server, real sockets, real ICE/DTLS/SRTP on this machine's LAN address (aioice skips loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import gc
import math
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from tests.client import Client, running_server, silence, test_config, tone
from tests.waiting import stays_false, wait_until

aiortc = pytest.importorskip("aiortc", reason="WebRTC tests need aiortc (pip install aiortc)")
import av  # noqa: E402
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack  # noqa: E402

RATE_HZ = 48000
FRAME_SAMPLES = 960  # 20 ms
RECEIVER_PREFETCH_MS = 80  # aiortc's audio jitter buffer holds 4 packets of 20 ms before it plays
VOICED_DBFS = -45.0  # the tone TTS speaks at about -13 dBFS; Opus silence decodes far below this


def dbfs(samples: np.ndarray) -> float:
    x = samples.astype(np.float32)
    rms = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    return 20 * math.log10(rms / 32768) if rms > 0 else -120.0


class PcmTrack(MediaStreamTrack):
    """Plays PCM16 mono 48 kHz in real time (20 ms frames), then silence; ``play`` queues more."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pcm = bytearray()
        self._start: float | None = None
        self._pts = 0
        self.speed = 1.0  # > 1: a flooding caller, frames faster than real time

    def play(self, pcm: bytes) -> None:
        self._pcm += pcm

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / RATE_HZ / self.speed - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = bytes(self._pcm[: FRAME_SAMPLES * 2]).ljust(FRAME_SAMPLES * 2, b"\0")
        del self._pcm[: FRAME_SAMPLES * 2]
        frame = av.AudioFrame.from_ndarray(np.frombuffer(chunk, "<i2").reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE_HZ
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE_HZ)
        self._pts += FRAME_SAMPLES
        return frame


@dataclass
class Heard:
    """Frames of the agent's track: (arrival time, dBFS)."""

    frames: list[tuple[float, float]] = field(default_factory=list)
    voiced: asyncio.Event = field(default_factory=asyncio.Event)

    def voiced_times(self, after: float = 0.0) -> list[float]:
        return [t for t, level in self.frames if level > VOICED_DBFS and t >= after]


async def _listen(track: MediaStreamTrack, heard: Heard) -> None:
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, av.AudioFrame)
        samples = frame.to_ndarray().reshape(-1)
        level = dbfs(samples)
        heard.frames.append((time.monotonic(), level))
        if level > VOICED_DBFS:
            heard.voiced.set()


@dataclass
class Call:
    client: Client
    pc: RTCPeerConnection
    mic: PcmTrack
    heard: Heard


@contextlib.asynccontextmanager
async def call(url: str, **hello: Any) -> AsyncIterator[Call]:
    async with Client.connect(url, hello={"audio_out": {"format": "pcm16", "rate": 48000}, **hello}) as client:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        mic = PcmTrack()
        heard = Heard()
        listeners: list[asyncio.Task[None]] = []
        pc.addTrack(mic)

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            listeners.append(asyncio.ensure_future(_listen(track, heard)))

        try:
            await pc.setLocalDescription(await pc.createOffer())
            await client.send({"type": "webrtc_offer", "sdp": pc.localDescription.sdp})
            answer = await client.recv_type("webrtc_answer", timeout=10)
            assert "a=candidate" in answer["sdp"], "ICE candidates must be gathered before the answer"
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
            await wait_until(lambda: pc.connectionState == "connected")
            yield Call(client, pc, mic, heard)
        finally:
            await pc.close()
            for task in listeners:
                task.cancel()


async def test_speech_in_over_webrtc_agent_audio_out_on_the_track() -> None:
    async with running_server(test_config()) as server, call(server.url) as c:
        await wait_until(lambda: len(c.heard.frames) >= 5)  # media flows both ways
        c.mic.play(tone(600, RATE_HZ) + silence(400, RATE_HZ))
        messages = await c.client.turn(timeout=10)
        kinds = [msg["type"] for msg in messages]
        final = [msg for msg in messages if msg["type"] == "transcript" and msg["final"]]
        assert final, kinds
        assert final[0]["text"].startswith("heard "), kinds
        assert any(msg["type"] == "reply" and msg["text"] for msg in messages), kinds
        assert kinds[-2:] == ["metrics", "turn_end"], kinds
        assert "audio" not in kinds, "agent audio must travel on the track, not the WebSocket"
        assert messages[-2]["voice_to_voice_ms"] is not None
        # The echo LLM's reply is ~10 words at 100 ms each: about a second of tone on the track.
        await wait_until(lambda: len(c.heard.voiced_times()) * 20 >= 600, 3)  # the last of it plays out
        await wait_until(lambda: not c.heard.voiced_times(after=time.monotonic() - 0.2), 3)
        # Between turns the track keeps running and carries silence.
        before = len(c.heard.frames)
        await wait_until(lambda: len(c.heard.frames) >= before + 10)
        idle = c.heard.frames[before:]
        assert len(idle) >= 10
        assert all(level <= VOICED_DBFS for _, level in idle)


async def test_call_audio_faster_than_the_audio_limit_loses_the_call() -> None:
    """A caller whose track sends 4x real time runs out of the audio budget (2x, 1 s burst here): the call is
    closed with a clear error, the conversation goes on over the WebSocket."""
    async with running_server(test_config(limits={"audio_burst_s": 1.0})) as server, call(server.url) as c:
        c.mic.speed = 4.0
        c.mic.play(silence(6000, RATE_HZ))
        errors = await c.client.recv_until(lambda msg: msg["type"] == "error", timeout=10)
        err = errors[-1]
        assert err["code"] == "webrtc_closed"
        assert "faster than 2x real time" in err["message"]
        assert err["fatal"] is False
        session = c.client.ready["session"]
        assert server.webrtc.calls[session].peer is None
        await c.client.send({"type": "text", "text": "still here"})
        messages = await c.client.turn(timeout=10)
        reply = "".join(msg["text"] for msg in messages if msg["type"] == "reply")
        assert "still here" in reply, messages


async def test_interrupt_stops_the_track_audio_within_100_ms() -> None:
    async with running_server(test_config()) as server, call(server.url) as c:
        await c.client.send({"type": "say", "text": " ".join(["word"] * 40)})  # four seconds of speech
        await asyncio.wait_for(c.heard.voiced.wait(), 5)
        await wait_until(lambda: len(c.heard.voiced_times()) >= 25)  # the caller heard 500 ms of it
        track = server.webrtc.calls[c.client.ready["session"]].peer.track  # the server's side of the call
        sent_at = time.monotonic()
        await c.client.send({"type": "interrupt"})
        interrupted = await c.client.recv_type("interrupted", timeout=2)
        heard_by_then = len(c.heard.frames)
        await wait_until(lambda: len(c.heard.frames) >= heard_by_then + 25)  # 500 ms more of the track
        # Server side: the last frame with the turn's audio left the track within 100 ms of `interrupt`.
        server_stop_ms = (track.last_voiced_at - sent_at) * 1000
        # Client side: the same, plus the receiver's fixed buffering (aiortc prefetches 4 packets).
        heard_stop_ms = (max(c.heard.voiced_times()) - sent_at) * 1000
        print(
            f"\ninterrupt -> last agent audio: left the server's track after {server_stop_ms:.0f} ms, "
            f"arrived at the caller after {heard_stop_ms:.0f} ms (incl. {RECEIVER_PREFETCH_MS} ms receiver prefetch)"
        )
        assert server_stop_ms <= 100, f"the track sent agent audio for {server_stop_ms:.0f} ms after interrupt"
        assert heard_stop_ms <= 100 + RECEIVER_PREFETCH_MS, f"agent audio heard {heard_stop_ms:.0f} ms after interrupt"
        assert not c.heard.voiced_times(after=sent_at + (100 + RECEIVER_PREFETCH_MS) / 1000)
        # played_ms comes from the track's own count of what it sent: about the time heard so far
        assert 400 <= interrupted["played_ms"] <= 1500, interrupted
        # The session goes on: a new turn is heard on the track again.
        again = time.monotonic()
        await c.client.send({"type": "say", "text": "hello again"})
        messages = await c.client.turn(timeout=5)
        assert messages[-1]["type"] == "turn_end"
        await wait_until(lambda: bool(c.heard.voiced_times(after=again)))


async def test_garbage_sdp_is_an_error_and_the_socket_stays_open() -> None:
    async with running_server(test_config()) as server, Client.connect(server.url) as client:
        for sdp in ("", "hello", "v=0\r\nthis is not sdp\r\n", "v=0\r\n" * 1000):
            await client.send({"type": "webrtc_offer", "sdp": sdp})
            err = await client.recv_type("error", timeout=5)
            assert err["code"] == "bad_sdp", err
            assert err["fatal"] is False
        await client.send({"type": "ping", "id": 7})
        assert (await client.recv_type("pong"))["id"] == 7
        await client.send({"type": "text", "text": "still here"})
        messages = await client.turn()
        assert any(msg["type"] == "audio" for msg in messages), "without a call, audio stays on the WebSocket"
        assert server.webrtc.peers == 0


async def test_closed_socket_ends_the_call_and_its_tasks() -> None:
    async with running_server(test_config()) as server:
        async with call(server.url) as c:
            session_id = c.client.ready["session"]
            server_call = server.webrtc.calls[session_id]
            peer = server_call.peer
            assert peer is not None
            assert server.webrtc.peers == 1
            tasks = set(peer.tasks)
            await c.client.send({"type": "bye"})
            await wait_until(lambda: server.webrtc.peers == 0 and session_id not in server.webrtc.calls)
        assert server.webrtc.peers == 0
        assert session_id not in server.webrtc.calls
        assert peer.pc.connectionState == "closed"
        assert peer.track.readyState == "ended"
        assert all(task.done() for task in tasks)
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith(session_id)]


async def test_caller_hanging_up_sends_audio_back_over_the_websocket() -> None:
    async with running_server(test_config()) as server, call(server.url) as c:
        await c.pc.close()  # DTLS close_notify reaches the server: its peer connection closes too
        err = await c.client.recv_type("error", timeout=5)
        assert err["code"] == "webrtc_closed", err
        assert err["fatal"] is False
        assert server.webrtc.peers == 0
        await c.client.send({"type": "say", "text": "back on the socket"})
        messages = await c.client.turn()
        assert any(msg["type"] == "audio" for msg in messages)


async def test_peer_cap() -> None:
    async with running_server(test_config(webrtc={"max_peers": 1})) as server:
        async with call(server.url):
            async with Client.connect(server.url) as second:
                pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
                try:
                    pc.addTrack(PcmTrack())
                    await pc.setLocalDescription(await pc.createOffer())
                    await second.send({"type": "webrtc_offer", "sdp": pc.localDescription.sdp})
                    err = await second.recv_type("error", timeout=5)
                    assert err["code"] == "webrtc_busy", err
                    assert server.webrtc.peers == 1
                finally:
                    await pc.close()
        assert server.webrtc.peers == 0
        async with call(server.url) as again:  # the slot is free again
            assert again.pc.connectionState == "connected"


def test_webrtc_section_is_validated() -> None:
    from transports.webrtc import WebrtcHub
    from vocab.errors import ConfigError

    assert WebrtcHub.from_config(None).options.max_peers == 20
    with pytest.raises(ConfigError, match=r"webrtc\.max_peer: unknown key"):
        WebrtcHub.from_config({"max_peer": 3})
    with pytest.raises(ConfigError, match=r"webrtc\.ice_servers\[0\]"):
        WebrtcHub.from_config({"ice_servers": ["http://example.org"]})


# ---------------------------------------------------------------- offers back to back (issue 13 #1)


def _audio_m_lines(sdp: str) -> int:
    return sum(1 for line in sdp.splitlines() if line.startswith("m=audio"))


async def _offerer(audio_m_lines: int) -> tuple[RTCPeerConnection, str]:
    """A client peer whose offer has ``audio_m_lines`` audio sections, so an answer tells which offer it answers."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTrack(PcmTrack())
    for _ in range(audio_m_lines - 1):
        pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def _server_peers(client_pcs: list[RTCPeerConnection]) -> weakref.WeakSet[RTCPeerConnection]:
    """The server's peer connections alive now (every RTCPeerConnection in this process but the client's)."""
    ours = {id(pc) for pc in client_pcs}
    # type(), not isinstance(): a dead weakref.proxy among the objects would raise ReferenceError
    found = (o for o in gc.get_objects() if issubclass(type(o), RTCPeerConnection) and id(o) not in ours)
    return weakref.WeakSet(found)


async def _offer_twice(client: Client) -> tuple[list[RTCPeerConnection], list[dict[str, Any]]]:
    """Two offers back to back (the second sent before the first is answered); waits for the second's answer."""
    pcs = [await _offerer(1), await _offerer(2)]
    for _pc, sdp in pcs:
        await client.send({"type": "webrtc_offer", "sdp": sdp})
    msgs = await client.recv_until(
        lambda m: m["type"] == "error" or (m["type"] == "webrtc_answer" and _audio_m_lines(m["sdp"]) == 2), 15
    )
    assert msgs[-1]["type"] == "webrtc_answer", msgs[-1]
    answers = [m for m in msgs if m["type"] == "webrtc_answer"]
    for answer in answers:  # each answer is applied to the offer it answers
        pc = pcs[_audio_m_lines(answer["sdp"]) - 1][0]
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    return [pc for pc, _sdp in pcs], answers


async def test_offers_back_to_back_leave_no_orphan_peer() -> None:
    """A second offer sent before the first is answered supersedes it: after ``bye`` no peer is left open
    (``hub.peers`` back to 0) and every server-side peer connection is closed."""
    async with running_server(test_config()) as server:
        client_pcs: list[RTCPeerConnection] = []
        try:
            async with Client.connect(server.url, hello={"audio_out": {"format": "pcm16", "rate": 48000}}) as c:
                client_pcs, answers = await _offer_twice(c)
                assert answers[-1]["type"] == "webrtc_answer"
                await wait_until(lambda: client_pcs[1].connectionState == "connected", 10)  # the newest call is up
                server_side = _server_peers(client_pcs)
                assert len(server_side) >= 1
                await c.send({"type": "bye"})
                with contextlib.suppress(ConnectionClosed):
                    await c.recv_until(lambda _m: False)
            await wait_until(lambda: not server.sessions)
            await wait_until(lambda: server.webrtc.peers == 0, 5)
            await wait_until(lambda: all(pc.connectionState == "closed" for pc in server_side), 5)
        finally:
            for pc in client_pcs:
                await pc.close()


async def test_twenty_offer_bursts_leave_the_peer_cap_free() -> None:
    """20 sessions each send two offers back to back and leave: the server-wide peer cap (20) is free again,
    and a fresh caller still gets an answer."""
    async with running_server(test_config()) as server:
        for _ in range(20):
            client_pcs: list[RTCPeerConnection] = []
            try:
                async with Client.connect(server.url, hello={"audio_out": {"format": "pcm16", "rate": 48000}}) as c:
                    client_pcs, _answers = await _offer_twice(c)
            finally:
                for pc in client_pcs:
                    await pc.close()
        await wait_until(lambda: not server.sessions)
        await wait_until(lambda: server.webrtc.peers == 0, 5)
        async with call(server.url) as fresh:
            assert fresh.pc.connectionState == "connected"


# ---------------------------------------------------------------- what an offer may ask of the server (issue 13 #5)


class UdpListener(asyncio.DatagramProtocol):
    """A local UDP port that counts what reaches it (a STUN connectivity check, say)."""

    def __init__(self) -> None:
        self.packets: list[tuple[bytes, Any]] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.packets.append((data, addr))


@contextlib.asynccontextmanager
async def udp_listener(host: str) -> AsyncIterator[tuple[UdpListener, int]]:
    transport, listener = await asyncio.get_running_loop().create_datagram_endpoint(UdpListener, local_addr=(host, 0))
    try:
        yield listener, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


def with_candidates(sdp: str, candidates: list[tuple[str, int]]) -> str:
    """``sdp`` with host candidates at ``candidates`` added to its first media section, at the top priority."""
    lines = sdp.split("\r\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("a=candidate:"))
    extra = [f"a=candidate:x{n} 1 udp {2**31 - 1 - n} {ip} {port} typ host" for n, (ip, port) in enumerate(candidates)]
    return "\r\n".join(lines[:at] + extra + lines[at:])


def lan_address(sdp: str) -> str:
    """The address of the client's own host candidate (this machine's LAN address; aioice skips loopback)."""
    line = next(line for line in sdp.split("\r\n") if line.startswith("a=candidate:"))
    return line.split()[4]


async def test_5000_candidates_at_a_local_udp_listener_are_refused_and_never_checked() -> None:
    config = test_config(webrtc={"max_sdp_bytes": 1 << 20})  # the candidate cap, not the size cap, says no
    async with (
        running_server(config) as server,
        Client.connect(server.url, hello={"audio_out": {"format": "pcm16", "rate": 48000}}) as c,
    ):
        pc, sdp = await _offerer(1)
        try:
            async with udp_listener("127.0.0.1") as (loop_seen, loop_port), udp_listener(lan_address(sdp)) as lan:
                lan_seen, lan_port = lan
                targets = [("127.0.0.1", loop_port), (lan_address(sdp), lan_port)] * 2500
                await c.send({"type": "webrtc_offer", "sdp": with_candidates(sdp, targets)})
                err = await c.recv_until(lambda m: m["type"] in ("error", "webrtc_answer"))
                assert (err[-1]["type"], err[-1].get("code")) == ("error", "bad_sdp"), err[-1]
                assert "candidates" in err[-1]["message"]
                await stays_false(lambda: bool(loop_seen.packets or lan_seen.packets), 1.5)
                assert server.webrtc.peers == 0
        finally:
            await pc.close()


async def test_candidates_at_loopback_and_link_local_are_dropped_and_never_checked() -> None:
    """The offer's own LAN candidate is kept and the call comes up; the ones at loopback and link-local are
    dropped before aioice sees them: the listener at 127.0.0.1 gets no STUN packet."""
    async with running_server(test_config()) as server:
        client = Client.connect(server.url, hello={"audio_out": {"format": "pcm16", "rate": 48000}})
        async with client as c, udp_listener("127.0.0.1") as (seen, port):
            pc, sdp = await _offerer(1)
            try:
                offer = with_candidates(sdp, [("127.0.0.1", port), ("169.254.10.10", port), ("::1", port)])
                await c.send({"type": "webrtc_offer", "sdp": offer})
                answer = await c.recv_until(lambda m: m["type"] in ("error", "webrtc_answer"))
                assert answer[-1]["type"] == "webrtc_answer", answer[-1]
                await pc.setRemoteDescription(RTCSessionDescription(sdp=answer[-1]["sdp"], type="answer"))
                await wait_until(lambda: pc.connectionState == "connected", 10)
                await stays_false(lambda: bool(seen.packets), 1.0)
            finally:
                await pc.close()


async def test_an_offer_over_the_size_cap_is_bad_sdp() -> None:
    async with (
        running_server(test_config()) as server,
        Client.connect(server.url, hello={"audio_out": {"format": "pcm16", "rate": 48000}}) as c,
    ):
        pc, sdp = await _offerer(1)
        try:
            padded = sdp.replace("\r\na=", "\r\na=x-padding:" + "p" * 100_000 + "\r\na=", 1)
            await c.send({"type": "webrtc_offer", "sdp": padded})
            err = await c.recv_type("error")
            assert err["code"] == "bad_sdp"
            assert "bytes" in err["message"]
            assert server.webrtc.peers == 0
            await c.send({"type": "webrtc_offer", "sdp": sdp})  # the same offer without the padding is fine
            assert "a=candidate" in (await c.recv_type("webrtc_answer"))["sdp"]
        finally:
            await pc.close()


async def test_video_is_refused_with_port_0_and_the_audio_call_comes_up() -> None:
    async with (
        running_server(test_config()) as server,
        Client.connect(server.url, hello={"audio_out": {"format": "pcm16", "rate": 48000}}) as c,
    ):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            pc.addTrack(PcmTrack())
            pc.addTransceiver("video", direction="sendrecv")
            await pc.setLocalDescription(await pc.createOffer())
            await c.send({"type": "webrtc_offer", "sdp": pc.localDescription.sdp})
            answer = (await c.recv_type("webrtc_answer"))["sdp"]
            video = [line for line in answer.split("\r\n") if line.startswith("m=video")]
            assert video, answer
            assert video[0].split()[1] == "0", video  # refused
            assert next(line for line in answer.split("\r\n") if line.startswith("m=audio")).split()[1] != "0"
            assert "a=group:BUNDLE 0\r\n" in answer  # the refused section is out of the group (RFC 8843)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
            peer = server.webrtc.calls[c.ready["session"]].peer
            assert peer is not None
            # The server's side of the call comes up. (aiortc as a client does not stop a refused section, as
            # browsers do: it waits for a transport of its own for it, so its overall state stays "connecting".)
            await wait_until(lambda: peer.connected.is_set() and pc.iceConnectionState == "completed", 10)
            # once the negotiation has ended, one task is left: the caller's audio; no reader of video
            await wait_until(lambda: len(peer.tasks) == 1)
            await stays_false(lambda: len(peer.tasks) != 1, 0.3)
        finally:
            await pc.close()


def test_candidate_networks_are_validated() -> None:
    from transports.webrtc import WebrtcHub
    from vocab.errors import ConfigError

    hub = WebrtcHub.from_config({"candidate_networks": ["192.0.2.0/24"]})
    assert hub.candidates.allows("192.0.2.7")
    assert not hub.candidates.allows("198.51.100.1")
    with pytest.raises(ConfigError, match=r"webrtc\.candidate_networks\[1\]"):
        WebrtcHub.from_config({"candidate_networks": ["10.0.0.0/8", "not-a-network"]})

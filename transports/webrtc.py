"""WebRTC calls attached to a WebSocket session: signaling, the peer connection, and the call's audio.

The WebSocket stays the control channel: ``webrtc_offer {sdp}`` is answered by ``webrtc_answer {sdp}``
(ICE gathered before the answer, no trickle), and every text event keeps travelling on the WebSocket.
A session has no WebRTC object until its first offer (``WebrtcHub.call_for``); then a ``WebrtcCall``
attaches: while it is up, the caller's audio comes from the remote track and the agent's audio is pulled
from the session's playhead by a local track instead of leaving as ``audio`` messages. One negotiation
per session at a time: a new offer supersedes and closes the previous one, whatever state it is in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from transports import messages as m
from transports.limits import TokenBucket
from transports.sdp import CandidatePolicy, SdpRefused, reject_media, screen_offer
from vocab.metrics import METRICS
from vocab.options import build, require

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

    from transports.webrtc_media import AgentAudioTrack, FrameSource

log = logging.getLogger("voxpipe.webrtc")
REFUSED_MEDIA = frozenset({"video"})  # answered with port 0: a voice call decodes no video
PEERS_OPEN = METRICS.gauge("voxpipe_webrtc_peers_open", "WebRTC peer connections open now")
CALL_FLOODS_TOTAL = METRICS.counter(
    "voxpipe_webrtc_floods_total", "Calls closed because their audio arrived faster than the audio limit"
)


@dataclass(frozen=True, slots=True)
class WebrtcOptions:
    """The ``webrtc`` section of config.yaml."""

    enabled: bool = True
    max_peers: int = 20  # across the server; an offer over the cap gets error ``webrtc_busy``
    # STUN/TURN URLs for callers outside the LAN; none by default (the server never calls out).
    ice_servers: list[str] = field(default_factory=list)
    negotiate_timeout_s: float = 10.0  # offer -> answer (ICE gathering included)
    connect_timeout_s: float = 20.0  # answer -> connected; a peer that never connects is closed
    max_sdp_bytes: int = 65536  # a browser's offer is 3-12 KiB; a bigger one gets bad_sdp
    max_candidates: int = 40  # ICE candidates in one offer; more gets bad_sdp
    # Networks (CIDR) a caller's ICE candidates may point at; the server sends connectivity checks there.
    # null: any address but loopback, link-local, unspecified, multicast and broadcast. Others are dropped.
    candidate_networks: list[str] | None = None
    hostname_candidates: bool = False  # mDNS names (*.local): aioice would resolve them to any address

    def validate(self) -> None:
        require(self.max_peers >= 0, "max_peers", "must be >= 0")
        require(self.negotiate_timeout_s > 0, "negotiate_timeout_s", "must be > 0")
        require(self.connect_timeout_s > 0, "connect_timeout_s", "must be > 0")
        require(self.max_sdp_bytes >= 1024, "max_sdp_bytes", "must be >= 1024")
        require(self.max_candidates >= 1, "max_candidates", "must be >= 1")
        for i, url in enumerate(self.ice_servers):
            require(url.split(":", 1)[0] in ("stun", "turn", "turns"), f"ice_servers[{i}]", "must be a stun:/turn: URL")
        for i, network in enumerate(self.candidate_networks or ()):
            try:
                CandidatePolicy.build([network], hostnames=False)
            except ValueError as exc:
                require(False, f"candidate_networks[{i}]", str(exc))


class CallHost(Protocol):
    """What a call needs from its session."""

    id: str
    in_rate_hz: int

    @property
    def frames(self) -> FrameSource:
        """The session's playout clock, pulled by the call's track."""
        ...

    def attach_track(self, attached: bool) -> None:
        """The track pulls the agent's audio from now on (True), or the WebSocket again (False)."""
        ...

    def caller_audio(self, pcm: bytes) -> None:
        """Caller audio (PCM16 at ``in_rate_hz``) into the session; never waits."""
        ...

    def send_control(self, message: Any) -> None:
        """A message for the client on the WebSocket (``webrtc_answer``)."""
        ...

    def error(self, code: str, message: str) -> None: ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...


class WebrtcHub:
    """Server-wide: the options, the peer cap, and the calls of running sessions."""

    def __init__(
        self, options: WebrtcOptions, *, audio_max_realtime: float | None = 2.0, audio_burst_s: float = 10.0
    ) -> None:
        self.options = options
        # the WebSocket's audio budget (config limits) holds for call audio too: a flood loses the call
        self.audio_max_realtime = audio_max_realtime
        self.audio_burst_s = audio_burst_s
        self.peers = 0
        self.calls: dict[str, WebrtcCall] = {}  # by session id, from the first offer to the session's end
        self.candidates = CandidatePolicy.build(options.candidate_networks, hostnames=options.hostname_candidates)
        METRICS.add_collector(lambda: PEERS_OPEN.set(self.peers))

    @classmethod
    def from_config(
        cls, section: Any, *, audio_max_realtime: float | None = 2.0, audio_burst_s: float = 10.0
    ) -> WebrtcHub:
        options = build(WebrtcOptions, section, "webrtc")
        return cls(options, audio_max_realtime=audio_max_realtime, audio_burst_s=audio_burst_s)

    def call_for(self, host: CallHost) -> WebrtcCall:
        """The call of a session that just sent its first offer."""
        call = self.calls[host.id] = WebrtcCall(self, host)
        return call


@dataclass(slots=True)
class _Peer:
    """One negotiation, and the call it becomes."""

    pc: RTCPeerConnection
    track: AgentAudioTrack
    audio_budget: TokenBucket | None
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    answered: bool = False
    flooded: bool = False
    close_task: asyncio.Future[None] | None = None


class WebrtcCall:
    """The WebRTC side of one session: at most one peer (negotiating or up) at a time."""

    def __init__(self, hub: WebrtcHub, host: CallHost) -> None:
        self.hub = hub
        self.host = host
        self.peer: _Peer | None = None  # the current negotiation or call, from the moment its offer is taken
        self._closing: set[asyncio.Future[None]] = set()  # peer connections still closing

    @property
    def active(self) -> bool:
        """A call is up or being set up (its audio does not pass the WebSocket)."""
        return self.peer is not None

    def offer(self, sdp: str) -> None:
        """``webrtc_offer``: supersede any previous negotiation or call, then negotiate this one."""
        self._drop(reason=None)
        opts = self.hub.options
        if not opts.enabled:
            self.host.error("unsupported", "webrtc_offer: WebRTC is turned off on this server (webrtc.enabled)")
            return
        try:
            from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

            from transports.webrtc_media import AgentAudioTrack
        except ImportError:
            self.host.error("unsupported", "webrtc_offer: this server has no WebRTC support (pip install aiortc)")
            return
        try:
            screened = screen_offer(
                sdp, max_sdp_bytes=opts.max_sdp_bytes, max_candidates=opts.max_candidates, policy=self.hub.candidates
            )
        except SdpRefused as exc:
            self.host.error("bad_sdp", f"webrtc_offer: {exc}")
            return
        if screened.dropped:
            log.info("session %s: %d ICE candidates of the offer dropped by policy", self.host.id, screened.dropped)
        if self.hub.peers >= opts.max_peers:
            self.host.error("webrtc_busy", f"webrtc_offer: the server is at its peer limit ({opts.max_peers})")
            return
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(url) for url in opts.ice_servers]))
        peer = self.peer = _Peer(pc, AgentAudioTrack(self.host.frames), self._audio_budget())
        self.hub.peers += 1
        PEERS_OPEN.set(self.hub.peers)
        self._spawn(peer, self._negotiate(peer, screened.sdp))

    async def close(self) -> None:
        """The session is over: end the call and wait for every peer connection to finish closing."""
        self._drop(reason=None)
        self.hub.calls.pop(self.host.id, None)
        if self._closing:
            await asyncio.gather(*self._closing)

    # ------------------------------------------------------------ one negotiation

    async def _negotiate(self, peer: _Peer, sdp: str) -> None:
        from aiortc import RTCSessionDescription

        from transports.webrtc_media import read_caller_audio

        opts = self.hub.options
        pc = peer.pc

        @pc.on("track")
        def on_track(remote: Any) -> None:
            if remote.kind == "audio":  # video is refused (inactive here, port 0 in the answer): never read
                reader = read_caller_audio(remote, self.host.in_rate_hz, lambda pcm: self._from_caller(peer, pcm))
                self._spawn(peer, reader)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                peer.connected.set()
            elif state in ("failed", "closed") and self.peer is peer:
                self._drop(reason=f"the WebRTC connection {state}")

        try:
            async with asyncio.timeout(opts.negotiate_timeout_s):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                if not any(t.kind == "audio" for t in pc.getTransceivers()):
                    raise ValueError("the offer has no audio")
                for transceiver in pc.getTransceivers():
                    if transceiver.kind != "audio":
                        transceiver.direction = "inactive"  # its receiver never starts: nothing is decoded
                pc.addTrack(peer.track)
                await pc.setLocalDescription(await pc.createAnswer())  # gathers ICE candidates first
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # anything wrong with the client's SDP is the client's error
            if self.peer is peer:
                self._drop(reason=None)
                reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
                self.host.error("bad_sdp", f"webrtc_offer: cannot answer this offer: {reason[:200]}")
            return
        if self.peer is not peer:
            return  # superseded while negotiating
        peer.answered = True
        self.host.attach_track(True)  # the agent's audio waits for the track from now on
        self.host.send_control(m.WebrtcAnswer(sdp=reject_media(pc.localDescription.sdp, REFUSED_MEDIA)))
        try:
            async with asyncio.timeout(opts.connect_timeout_s):  # not wait_for: it can lose a cancellation
                await peer.connected.wait()
        except TimeoutError:
            if self.peer is peer:
                self._drop(reason=f"the caller did not connect within {opts.connect_timeout_s:g} s")

    def _from_caller(self, peer: _Peer, pcm: bytes) -> None:
        if peer.flooded or self.peer is not peer:
            return  # the call is closing: what still arrives from it is dropped
        if peer.audio_budget is not None and not peer.audio_budget.take(len(pcm), time.monotonic()):
            peer.flooded = True
            CALL_FLOODS_TOTAL.inc()
            factor = self.hub.audio_max_realtime
            self._drop(reason=f"the call's audio arrived faster than {factor:g}x real time (rate_limited)")
            return
        self.host.caller_audio(pcm)

    def _audio_budget(self) -> TokenBucket | None:
        factor = self.hub.audio_max_realtime
        if factor is None:
            return None
        bytes_per_s = self.host.in_rate_hz * 2
        return TokenBucket(factor * bytes_per_s, self.hub.audio_burst_s * bytes_per_s, time.monotonic())

    # ------------------------------------------------------------ tasks and teardown

    def _spawn(self, peer: _Peer, coro: Coroutine[Any, Any, Any]) -> None:
        task = self.host.spawn(self._guard(peer, coro))
        peer.tasks.add(task)
        task.add_done_callback(peer.tasks.discard)
        # a negotiation superseded before its task's first step never starts ``coro``: close it (no warning)
        task.add_done_callback(lambda _task: coro.close())

    async def _guard(self, peer: _Peer, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # a call's failure must not end the conversation
            log.exception("session %s: WebRTC task failed", self.host.id)
            if self.peer is peer:
                self._drop(reason=None)
                self.host.error("webrtc_failed", "the WebRTC call failed; audio goes over the WebSocket again")

    def _drop(self, *, reason: str | None) -> None:
        """End the current peer, if any (audio goes back to the WebSocket); ``reason`` is told to the client.

        ``pc.close()`` runs in a task of its own (awaited by ``close``): cancelling an aiortc close that
        waits for another close would cancel aiortc's internal future and break both.
        """
        peer, self.peer = self.peer, None
        if peer is None or peer.close_task is not None:
            return
        if peer.answered:
            self.host.attach_track(False)
        self.hub.peers -= 1
        PEERS_OPEN.set(self.hub.peers)
        peer.track.stop()
        current = asyncio.current_task()
        for task in peer.tasks:
            if task is not current:
                task.cancel()
        peer.close_task = asyncio.ensure_future(_close_quietly(peer.pc))
        self._closing.add(peer.close_task)
        peer.close_task.add_done_callback(self._closing.discard)
        if reason is not None:
            self.host.error("webrtc_closed", f"{reason}; audio goes over the WebSocket again")


async def _close_quietly(pc: RTCPeerConnection) -> None:
    try:
        await pc.close()
    except Exception:  # closing a half-set-up connection may fail; it is gone either way
        log.debug("closing a peer connection failed", exc_info=True)

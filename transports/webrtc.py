"""WebRTC call-in on top of a WebSocket session: signaling, the peer connection, and audio routing.

The WebSocket stays the control channel: ``webrtc_offer {sdp}`` is answered by ``webrtc_answer {sdp}``
(ICE gathered before the answer, no trickle), and every text event (transcript, reply, metrics,
interrupted, errors) keeps travelling on the WebSocket. Once a call is up, the caller's audio comes
from the remote track and the agent's audio leaves on a local track instead of ``audio`` messages;
``interrupted`` drops the turn's queued audio from the track. ``CallIn`` wraps one session: it is
the session's ``send`` and the transport's session object (``id``, ``ready()``, ``run()``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from server.limits import TokenBucket
from server.metrics import METRICS, QUEUE_DROPS_TOTAL
from server.options import build, require
from transports import messages as m

if TYPE_CHECKING:
    from aiortc import RTCPeerConnection

    from transports.webrtc_media import AgentAudioTrack

log = logging.getLogger("voxpipe.webrtc")
Send = Callable[[Any], Awaitable[None]]
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
    out_queue_ms: float = 2000.0  # agent audio waiting for the track; overflow drops the oldest
    in_queue_items: int = 100  # caller audio frames (20 ms) waiting for the session; oldest dropped

    def validate(self) -> None:
        require(self.max_peers >= 0, "max_peers", "must be >= 0")
        require(self.negotiate_timeout_s > 0, "negotiate_timeout_s", "must be > 0")
        require(self.connect_timeout_s > 0, "connect_timeout_s", "must be > 0")
        require(self.out_queue_ms >= 200, "out_queue_ms", "must be >= 200")
        require(self.in_queue_items >= 8, "in_queue_items", "must be >= 8")
        for i, url in enumerate(self.ice_servers):
            require(url.split(":", 1)[0] in ("stun", "turn", "turns"), f"ice_servers[{i}]", "must be a stun:/turn: URL")


class SessionLike(Protocol):
    id: str
    in_rate_hz: int
    out_rate_hz: int

    def ready(self) -> m.Ready: ...

    @property
    def busy(self) -> bool: ...

    async def run(self, messages: AsyncIterator[Any]) -> None: ...

    def error(self, code: str, message: str, *, turn: int | None = None, fatal: bool = False) -> None: ...


class WebrtcHub:
    """Server-wide: the options and the peer cap."""

    def __init__(
        self, options: WebrtcOptions, *, audio_max_realtime: float | None = 2.0, audio_burst_s: float = 10.0
    ) -> None:
        self.options = options
        # the WebSocket's audio budget (config limits) holds for call audio too: a flood loses the call
        self.audio_max_realtime = audio_max_realtime
        self.audio_burst_s = audio_burst_s
        self.peers = 0
        self.calls: dict[str, CallIn] = {}  # by session id, while the session runs
        METRICS.add_collector(lambda: PEERS_OPEN.set(self.peers))

    @classmethod
    def from_config(
        cls, section: Any, *, audio_max_realtime: float | None = 2.0, audio_burst_s: float = 10.0
    ) -> WebrtcHub:
        options = build(WebrtcOptions, section, "webrtc")
        return cls(options, audio_max_realtime=audio_max_realtime, audio_burst_s=audio_burst_s)

    def call_in(self, send: Send) -> CallIn:
        return CallIn(self, send)


@dataclass(slots=True)
class _Peer:
    pc: RTCPeerConnection
    track: AgentAudioTrack
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    close_task: asyncio.Future[None] | None = None


class CallIn:
    """One WebSocket session with an optional WebRTC call. Use ``send`` as the session's sender."""

    def __init__(self, hub: WebrtcHub, send: Send) -> None:
        self.hub = hub
        self._send_ws = send
        self.session: SessionLike | None = None
        self.id = ""  # the session's, once attached
        self.peer: _Peer | None = None
        opts = hub.options
        self._ws_in: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)  # full: the WebSocket reader waits
        self._rtc_in: deque[Any] = deque()  # caller audio and played acks; full: oldest dropped
        self._rtc_in_max = opts.in_queue_items
        self._ws_done = False
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._tg: asyncio.TaskGroup | None = None
        self._closing: set[asyncio.Future[None]] = set()  # peer connections still closing
        self._audio_budget: TokenBucket | None = None  # per call, set up with its answer
        self._flooded = False

    # ------------------------------------------------------------ the transport's view

    def attach(self, session: SessionLike) -> CallIn:
        self.session = session
        self.id = session.id
        return self

    def ready(self) -> m.Ready:
        assert self.session is not None
        return self.session.ready()

    @property
    def busy(self) -> bool:
        """Not idle: a turn is open, or a call is up (its audio does not pass the WebSocket)."""
        return self.peer is not None or (self.session is not None and self.session.busy)

    async def send(self, message: Any) -> None:
        """The session's sender: agent audio goes to the call's track while a call is up."""
        peer = self.peer
        if peer is not None:
            kind = type(message)
            if kind is m.AudioOut:
                peer.track.push(message.turn, message.data)
                return
            if kind is m.Interrupted:
                peer.track.drop_turn(message.turn)
        await self._send_ws(message)

    async def run(self, messages: AsyncIterator[Any]) -> None:
        """Run the session on the WebSocket's messages merged with the call's audio; close the call after."""
        assert self.session is not None
        self.hub.calls[self.id] = self
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                reader = tg.create_task(self._read_ws(messages), name=f"{self.id}:ws-reader")
                try:
                    await self.session.run(self._incoming())
                finally:
                    reader.cancel()
                    for task in list(self._tasks):
                        task.cancel()
        finally:
            self._tg = None
            self.hub.calls.pop(self.id, None)
            await self._close_peer(reason=None)
            if self._closing:
                await asyncio.gather(*self._closing)

    # ------------------------------------------------------------ incoming messages

    async def _read_ws(self, messages: AsyncIterator[Any]) -> None:
        try:
            async for msg in messages:
                if isinstance(msg, m.WebrtcOffer):
                    self._spawn(self._answer(msg.sdp), "webrtc-offer")
                else:
                    await self._ws_in.put(msg)
                    self._wakeup.set()
        finally:
            self._ws_done = True
            self._wakeup.set()

    def _from_call(self, msg: Any) -> None:
        if type(msg) is m.Audio and self._audio_budget is not None:
            if self._flooded:
                return  # the call is closing: what still arrives from it is dropped
            if not self._audio_budget.take(len(msg.data), time.monotonic()):
                self._flooded = True
                CALL_FLOODS_TOTAL.inc()
                factor = self.hub.audio_max_realtime
                reason = f"the call's audio arrived faster than {factor:g}x real time (rate_limited)"
                self._spawn(self._close_peer(reason=reason), "webrtc-flood")
                return
        if len(self._rtc_in) >= self._rtc_in_max:
            self._rtc_in.popleft()
            QUEUE_DROPS_TOTAL.inc(edge="webrtc_in")
        self._rtc_in.append(msg)
        self._wakeup.set()

    async def _incoming(self) -> AsyncIterator[Any]:
        """WebSocket messages and call audio, one stream for the session (which handles one at a time)."""
        while True:
            self._wakeup.clear()
            progressed = False
            if not self._ws_in.empty():
                progressed = True
                yield self._ws_in.get_nowait()
            elif self._ws_done:
                return
            if self._rtc_in:
                progressed = True
                yield self._rtc_in.popleft()
            if not progressed:
                await self._wakeup.wait()

    def _new_audio_budget(self, in_rate_hz: int) -> TokenBucket | None:
        factor = self.hub.audio_max_realtime
        if factor is None:
            return None
        bytes_per_s = in_rate_hz * 2
        return TokenBucket(factor * bytes_per_s, self.hub.audio_burst_s * bytes_per_s, time.monotonic())

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        assert self._tg is not None
        task = self._tg.create_task(self._guard(coro), name=f"{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Awaitable[Any]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # a call's failure must not end the conversation
            log.exception("session %s: WebRTC task failed", self.id)
            self._error("webrtc_failed", "the WebRTC call failed; audio goes over the WebSocket again")
            await self._close_peer(reason=None)

    def _error(self, code: str, message: str) -> None:
        if self.session is not None:
            self.session.error(code, message)

    # ------------------------------------------------------------ the call

    async def _answer(self, sdp: str) -> None:
        opts = self.hub.options
        if not opts.enabled:
            self._error("unsupported", "webrtc_offer: WebRTC is turned off on this server (webrtc.enabled)")
            return
        try:
            from transports.webrtc_media import AgentAudioTrack, read_caller_audio
        except ImportError:
            self._error("unsupported", "webrtc_offer: this server has no WebRTC support (pip install aiortc)")
            return
        await self._close_peer(reason=None)  # a new offer replaces the call
        if self.hub.peers >= opts.max_peers:
            self._error("webrtc_busy", f"webrtc_offer: the server is at its peer limit ({opts.max_peers})")
            return
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

        assert self.session is not None
        session = self.session
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(url) for url in opts.ice_servers]))
        track = AgentAudioTrack(
            session.out_rate_hz,
            max_queue_ms=opts.out_queue_ms,
            on_played=lambda turn, ms: self._from_call(m.Played(turn=turn, ms=ms)),
        )
        peer = _Peer(pc, track)
        self._audio_budget = self._new_audio_budget(session.in_rate_hz)
        self._flooded = False
        this_task = asyncio.current_task()
        if this_task is not None:
            peer.tasks.add(this_task)  # a newer offer or the session's end cancels this negotiation
        self.peer = None  # audio keeps going over the WebSocket until the answer is out
        self.hub.peers += 1
        PEERS_OPEN.set(self.hub.peers)

        @pc.on("track")
        def on_track(remote: Any) -> None:
            deliver = (lambda pcm: self._from_call(m.Audio(data=pcm))) if remote.kind == "audio" else (lambda _: None)
            task = self._spawn(read_caller_audio(remote, session.in_rate_hz, deliver), "webrtc-in")
            peer.tasks.add(task)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                peer.connected.set()
            elif state in ("failed", "closed") and self.peer is peer and self._tg is not None:
                self._spawn(self._close_peer(reason=f"the WebRTC connection {state}"), "webrtc-close")

        try:
            async with asyncio.timeout(opts.negotiate_timeout_s):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
                if not any(t.kind == "audio" for t in pc.getTransceivers()):
                    raise ValueError("the offer has no audio")
                pc.addTrack(track)
                await pc.setLocalDescription(await pc.createAnswer())  # gathers ICE candidates first
        except asyncio.CancelledError:
            await self._release(peer)
            raise
        except Exception as exc:  # anything wrong with the client's SDP is the client's error
            await self._release(peer)
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            self._error("bad_sdp", f"webrtc_offer: cannot answer this offer: {reason[:200]}")
            return
        self.peer = peer
        await self._send_ws(m.WebrtcAnswer(sdp=pc.localDescription.sdp))
        try:
            async with asyncio.timeout(opts.connect_timeout_s):  # not wait_for: it can lose a cancellation
                await peer.connected.wait()
        except TimeoutError:
            if self.peer is peer:
                await self._close_peer(reason=f"the caller did not connect within {opts.connect_timeout_s:g} s")

    async def _release(self, peer: _Peer) -> None:
        """Close one peer connection and end its tasks (idempotent, and safe to cancel).

        ``pc.close()`` runs in a task of its own: cancelling an aiortc close that waits for
        another close would cancel aiortc's internal future and break both.
        """
        if peer.close_task is None:
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
        await asyncio.shield(peer.close_task)

    async def _close_peer(self, *, reason: str | None) -> None:
        """End the call (audio goes back to the WebSocket); ``reason`` is told to the client."""
        peer, self.peer = self.peer, None
        if peer is None:
            return
        await self._release(peer)
        if reason is not None:
            self._error("webrtc_closed", f"{reason}; audio goes over the WebSocket again")


async def _close_quietly(pc: RTCPeerConnection) -> None:
    try:
        await pc.close()
    except Exception:  # closing a half-set-up connection may fail; it is gone either way
        log.debug("closing a peer connection failed", exc_info=True)

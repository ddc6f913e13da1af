"""The running server: builds and loads the pipeline once, serves WebSocket + HTTP, drains on shutdown.

``serve(config)`` is an async context manager (used by the CLI and by the tests, which run the real
server in their own event loop on a free port).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from server.admission import Admission, Ticket
from server.aec import available as aec_available
from server.aec import echo_canceller_options
from server.auth import Authenticator
from server.config import Config
from server.echo_guard import echo_guard_options
from server.http import HostAllowList, Routes, metrics_token, web_root
from server.loop_lag import watch_loop_lag
from server.realtime_endpoint import (
    is_realtime,
    realtime_connection,
    realtime_options,
    response_hook,
    subprotocol_selector,
)
from server.resume import Resumes
from server.resume_tokens import ResumeTokens, resume_secret
from server.session import Session, validate_hello
from server.state import SafeStore, make_store
from server.telemetry import make_tracer, telemetry_options
from stages.registry import StageSpec, build_pipeline, describe_chain, load_all
from transports import messages as m
from transports.connection import Connection, ConnectionProtocol
from transports.webrtc import WebrtcHub
from transports.websocket import close_bounded, reap_closing, serve_connection
from vocab.errors import ProtocolError
from vocab.metrics import ERRORS_TOTAL, METRICS, SESSIONS_OPEN, SESSIONS_TOTAL

log = logging.getLogger("voxpipe.app")
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class RunningServer:
    """A started server: its port and URLs, its open sessions, and graceful ``drain``."""

    def __init__(self, config: Config, specs: list[StageSpec], log: Callable[[str], None]) -> None:
        self.config = config
        self.specs = specs
        self.log = log
        self.sessions: dict[str, Session] = {}
        self._sockets: dict[str, ServerConnection] = {}  # by session id, while its connection is open
        # the session id named at the handshake (X-Voxpipe-Session): the one a new session takes
        self._handshake_ids: weakref.WeakKeyDictionary[ServerConnection, str] = weakref.WeakKeyDictionary()
        self.started_at = time.monotonic()
        self.ws_server: Server | None = None
        self.port = 0
        self.accepting = True
        self.echo_guard = echo_guard_options(config.extra)  # ConfigError at start, naming the bad key
        self.echo_canceller = echo_canceller_options(config.extra)
        if self.echo_canceller.enabled and not aec_available():
            self.log("voxpipe: no echo canceller (pip install livekit): clients with aec false get the echo guard only")
        self.admission = Admission(
            Authenticator(config.auth),
            config.limits,
            max_sessions=config.server.max_sessions,
            max_pending=config.server.max_pending_hellos,
            accepting=lambda: self.accepting,
        )
        self.webrtc = WebrtcHub.from_config(  # validates the webrtc section
            config.extra.get("webrtc"),
            audio_max_realtime=config.limits.audio_max_realtime,
            audio_burst_s=config.limits.audio_burst_s,
        )
        self.resumes = self._resumes(config)
        self.realtime = realtime_options(config)  # the OpenAI Realtime endpoint (ConfigError at start)
        self.telemetry = telemetry_options(config.extra)  # ConfigError at start, naming the bad key
        self.tracer = make_tracer(self.telemetry)
        METRICS.add_collector(lambda: SESSIONS_OPEN.set(len(self.sessions)))

    def _resumes(self, config: Config) -> Resumes:
        opts, limits = config.session, config.limits
        store = SafeStore(make_store(config.state), timeout_s=config.state.timeout_s)
        tokens = None
        lifetime_s = limits.max_session_s or 86_400.0
        if opts.resume_grace_s is not None:
            secret, shared = resume_secret(opts.resume_secret_env)
            if not shared:
                self.log(f"voxpipe: resume works within this process (set ${opts.resume_secret_env} to share it)")
            tokens = ResumeTokens(secret, ttl_s=opts.resume_token_ttl_s or lifetime_s + opts.resume_grace_s)
        live_ttl_s = (limits.idle_timeout_s or lifetime_s) + (opts.resume_grace_s or 0.0)
        return Resumes(store, tokens, grace_s=opts.resume_grace_s, live_ttl_s=live_ttl_s, takeover=self._take_over)

    async def _take_over(self, session_id: str) -> None:
        """A resume of a session still connected here: its old socket goes (it is held, then resumed)."""
        ws = self._sockets.get(session_id)
        if ws is not None:
            await close_bounded(ws, 4000, "resumed on another connection")

    @property
    def host(self) -> str:
        return self.config.server.host

    @property
    def url(self) -> str:
        return f"ws://{self._url_host}:{self.port}{self.config.server.ws_path}"

    @property
    def realtime_url(self) -> str:
        """The OpenAI Realtime endpoint (the SDK's ``websocket_base_url`` is this without ``/realtime``)."""
        return f"ws://{self._url_host}:{self.port}{self.realtime.path}"

    @property
    def http_url(self) -> str:
        return f"http://{self._url_host}:{self.port}/"

    @property
    def _url_host(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "", "::"):
            return "localhost"
        return f"[{host}]" if ":" in host else host

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.accepting else "draining",
            "pid": os.getpid(),
            "worker": os.environ.get("VOXPIPE_WORKER"),  # set by voxpipe serve --workers
            "sessions": len(self.sessions),
            "connections": self.admission.connections,
            "tasks": len(asyncio.all_tasks()),  # leak checks (bench/soak.py)
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "graph": [
                {"name": s.name, "engine": s.engine_name, "in": s.input_type, "out": s.output_type} for s in self.specs
            ],
        }

    def name_session(self, connection: ServerConnection, request: Request, response: Response) -> Response:
        """``process_response``: the upgrade names the connection's session (``X-Voxpipe-Session``), so a
        load balancer can send its resumes back here (deploy/haproxy.cfg sticks on it). A resume names
        the session of its ``?session=``; a new connection gets a fresh id, which its new session takes."""
        if response.status_code == 101:
            wanted = parse_qs(urlsplit(request.path).query).get("session", [""])[0]
            if SESSION_ID.fullmatch(wanted):
                response.headers["X-Voxpipe-Session"] = wanted
            else:
                fresh = self._handshake_ids[connection] = uuid.uuid4().hex[:12]
                response.headers["X-Voxpipe-Session"] = fresh
        return response

    @property
    def ready_for_sessions(self) -> bool:
        """``GET /ready``: taking new sessions (not draining, below the session cap)."""
        return self.accepting and self.admission.connections < self.config.server.max_sessions

    async def open_session(self, hello: m.Hello, send: m.Send, ticket: Ticket) -> Session:
        identity = self.admission.admit_user(ticket, hello.token)  # unauthorized: close 1008
        validate_hello(hello, [s.name for s in self.specs])
        prompt = hello.session.system_prompt if hello.session else None
        max_chars = self.config.limits.max_text_chars
        if prompt is not None and max_chars is not None and len(prompt) > max_chars:
            raise ProtocolError("too_long", f"hello.session.system_prompt: over {max_chars} characters")
        if not self.accepting:
            raise ProtocolError(
                "shutting_down", "the server is shutting down", fatal=True, close_code=CloseCode.GOING_AWAY
            )
        if len(self.sessions) >= self.config.server.max_sessions:
            raise ProtocolError(
                "server_full",
                f"the server is at its session limit ({self.config.server.max_sessions})",
                fatal=True,
                close_code=CloseCode.TRY_AGAIN_LATER,
            )
        self.admission.check_ip(ticket)
        restored = None if hello.resume is None else await self.resumes.find(hello.resume, identity.user)
        session = Session(
            hello,
            self.specs,
            self.config.session,
            send,
            session_id=self._handshake_ids.get(ticket.connection),
            user=identity.user,
            restored=restored,
            last_seen_seq=hello.resume.last_session_seq if restored is not None and hello.resume else 0,
            echo_guard=self.echo_guard,
            echo_canceller=self.echo_canceller,
            calls=self.webrtc.call_for,
            tracer=self.tracer,
            log_transcripts=self.telemetry.log_transcripts,
        )
        if hello.resume is not None and restored is None:
            ERRORS_TOTAL.inc(code="resume_failed")
            message = "this session cannot be resumed (unknown, expired, or not yours): a new one starts"
            session.opening_errors.append(m.Error(code="resume_failed", message=message, fatal=False))
        self.resumes.attach(session)
        self.admission.session_opened(ticket)  # no longer a connection waiting for its hello
        session.report.session_start(
            ip=ticket.ip,
            resumed=restored is not None,
            audio_in_hz=hello.audio_in.rate,
            audio_out_hz=hello.audio_out.rate,
        )
        return session

    async def handler(self, ws: ServerConnection) -> None:
        async def open_session(hello: m.Hello, send: m.Send) -> Session:
            session = await self.open_session(hello, send, ticket)
            expires_at = ticket.identity.expires_at  # a JWT's exp holds during the session too
            conn.expire_at(None if expires_at is None else time.monotonic() + (expires_at - time.time()))
            self.sessions[session.id] = session
            self._sockets[session.id] = ws
            SESSIONS_TOTAL.inc()
            opened.append(session)
            return session

        opened: list[Session] = []
        opts = self.config.server
        realtime = is_realtime(self.realtime, ws.request)
        with self.admission.connection(ws) as ticket:
            conn: ConnectionProtocol
            if realtime and ws.request is not None:
                conn = realtime_connection(self.config, self.specs, self.realtime, ws.request, now=time.monotonic())
            else:
                conn = Connection(
                    limits=self.config.limits,
                    hello_timeout_s=opts.hello_timeout_s,
                    max_frame_bytes=opts.max_frame_bytes,
                    now=time.monotonic(),
                )
            try:
                await serve_connection(
                    ws, conn, open_session, slow_reader_grace_s=self.config.limits.slow_reader_grace_s
                )
            finally:
                # no close decided by the protocol: the socket went away, or the server closed it (drain,
                # takeover): the session is held for a resume. A bye or a fatal close ends it.
                # (a Realtime client cannot resume: its session ends with its socket)
                dropped = conn.close is None and not realtime
                for session in opened:
                    try:
                        await self.resumes.release(session, dropped=dropped)
                        held = dropped and self.resumes.enabled
                        reason = "held" if held else ("dropped" if conn.close is None else f"closed {conn.close.code}")
                        session.report.session_end(reason=reason)
                    finally:
                        self.sessions.pop(session.id, None)
                        if self._sockets.get(session.id) is ws:
                            del self._sockets[session.id]

    async def drain(self, timeout_s: float | None = None) -> None:
        """Stop taking sessions (``/ready`` 503, handshakes 503), let the turns in flight finish (up to
        ``timeout_s``), tell every client ``going_away`` (fatal: resume elsewhere), then close all with 1001.
        Their sessions are held for a resume, in the state store another worker reads."""
        self.accepting = False
        deadline = time.monotonic() + (self.config.server.drain_timeout_s if timeout_s is None else timeout_s)
        # polls many sessions' turns: there is no single event to wait on
        while time.monotonic() < deadline and any(  # noqa: ASYNC110
            t.responding for s in self.sessions.values() for t in s.turns.live.values()
        ):
            await asyncio.sleep(0.05)
        server = self.ws_server
        if server is None:
            return
        server.server.close()  # stop listening; open connections go on (websockets' close() runs once)
        sessions = list(self.sessions.values())
        for session in sessions:
            hint = "the server is restarting: reconnect and resume with your token" if self.resumes.enabled else ""
            session.error("going_away", hint or "the server is shutting down", fatal=True)
        if sessions:
            with contextlib.suppress(TimeoutError):  # a client that does not read gets the close anyway
                async with asyncio.timeout(self.config.server.close_timeout_s or 5.0):
                    await asyncio.gather(*(s.outbox.flush_control() for s in sessions))
        # websockets' own close waits for every client to read its close frame; a client that stopped
        # reading would hold the shutdown, so each close is bounded and then aborted.
        closing = [
            asyncio.create_task(close_bounded(ws, CloseCode.GOING_AWAY, "server shutting down"))
            for ws in server.connections
        ]
        if closing:
            await asyncio.wait(closing)
        server.close(close_connections=False)  # websockets' close task: waits for the handlers to return
        close_s = self.config.server.close_timeout_s or 5.0
        try:
            async with asyncio.timeout(close_s):
                await server.wait_closed()
        except TimeoutError:
            for ws in list(server.all_connections):  # open or stuck closing: abort them all
                ws.transport.abort()
            try:
                async with asyncio.timeout(close_s):
                    await server.wait_closed()
            except TimeoutError:
                self.log("voxpipe: some connections did not finish closing; stopping anyway")


def _upgraded(running: RunningServer) -> Callable[[ServerConnection, Request, Response], Response]:
    """``process_response``: a Realtime connection's event size, then the session's name on the upgrade."""
    widen = response_hook(running.realtime)

    def upgraded(connection: ServerConnection, request: Request, response: Response) -> Response:
        widen(connection, request, response)
        return running.name_session(connection, request, response)

    return upgraded


def _stderr_log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def serve(
    config: Config, *, quiet: bool = False, log: Callable[[str], None] | None = None
) -> AsyncIterator[RunningServer]:
    """Build, load and start the server; on exit, drain and close it."""
    say = log or ((lambda _text: None) if quiet else _stderr_log)
    token = metrics_token(config.server.metrics_token_env)  # before the models load: fail fast
    root = web_root(config.server.web_root)  # likewise: a missing demo page folder is a start-up error
    specs = build_pipeline(config.pipeline)
    say(f"voxpipe: pipeline {describe_chain(specs)}")
    started = time.monotonic()
    await asyncio.get_running_loop().run_in_executor(None, load_all, specs, say)
    if not quiet and time.monotonic() - started > 0.5:
        say(f"voxpipe: models loaded in {time.monotonic() - started:.1f} s")
    running = RunningServer(config, specs, say)
    opts = config.server
    routes = Routes(
        ws_path=opts.ws_path,
        web_root=root,
        health=running.health,
        admit=running.admission.check_handshake,
        metrics_token=token,
        hosts=HostAllowList.for_server(opts.allowed_hosts, opts.host),
        ready=lambda: running.ready_for_sessions,
        extra_ws_paths=(running.realtime.path,) if running.realtime.enabled else (),
    )
    ws_server = await ws_serve(
        running.handler,
        opts.host,
        opts.port,
        process_request=routes,  # Origin is checked there too (Admission.check_handshake)
        process_response=_upgraded(running),
        select_subprotocol=subprotocol_selector(running.realtime),
        max_size=opts.max_frame_bytes,
        compression=None,
        ping_interval=opts.ping_interval_s,
        ping_timeout=opts.ping_timeout_s,
        open_timeout=opts.open_timeout_s,
        close_timeout=opts.close_timeout_s,
        max_queue=opts.max_queue_frames,
        write_limit=opts.write_limit_bytes,
        server_header="voxpipe",
    )
    running.ws_server = ws_server
    running.port = ws_server.sockets[0].getsockname()[1]
    say(f"voxpipe: serving the demo page at {running.http_url} (WebSocket {running.url})")
    if running.realtime.enabled:
        say(f"voxpipe: OpenAI Realtime API at {running.realtime_url}")
    reaper = asyncio.create_task(reap_closing(ws_server, min(1.0, opts.close_timeout_s or 1.0)), name="reaper")
    lag = asyncio.create_task(watch_loop_lag(), name="loop-lag")
    try:
        yield running
    finally:
        try:
            await running.drain(timeout_s=0 if quiet else None)
        finally:
            reaper.cancel()
            lag.cancel()
        for spec in specs:
            await spec.factory.aclose()
        # the last spans go out (an exporter may block on the network: not on the loop)
        await asyncio.get_running_loop().run_in_executor(None, running.tracer.shutdown)

"""Who gets in, and how many: the WebSocket handshake gate and the session caps.

At the handshake (``check_handshake``, called from ``process_request``): a bad token gets HTTP 401,
a full server / IP / user gets HTTP 503 with the reason, a draining server 503. After the handshake a
connection holds a ``Ticket`` (counted per IP); at ``hello`` the user's cap is checked again with the
final identity, since a token may come only in ``hello.token`` (then the refusal is close 1013 / 1008).
Connections still waiting for their hello are not sessions: they have caps of their own (``max_pending``
in all, ``limits.max_pending_per_ip`` per address) and the short ``server.hello_timeout_s``, so silent
connections cannot take the sessions' places.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from server.auth import ANONYMOUS, Authenticator, Identity, origin_allowed, token_from_request
from server.http import response
from transports.limits import LimitOptions
from vocab.errors import ProtocolError
from vocab.metrics import METRICS

REFUSED_TOTAL = METRICS.counter("voxpipe_refused_total", "Connections refused at the handshake or hello, by code")


def _refuse(status: int, code: str, message: str) -> Response:
    REFUSED_TOTAL.inc(code=code)
    extra = {"Retry-After": "5"} if status == 503 else {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    body = json.dumps({"code": code, "message": message}).encode()
    return response(status, body, "application/json", extra=extra)


@dataclass(slots=True)
class Ticket:
    """One admitted connection: where it comes from and, once known, whose it is."""

    ip: str
    identity: Identity
    user_counted: str | None = None
    connection: Any = None  # the websockets connection it admitted
    pending: bool = True  # waiting for its hello (no session yet)


class Admission:
    def __init__(
        self,
        auth: Authenticator,
        limits: LimitOptions,
        *,
        max_sessions: int,
        accepting: Callable[[], bool],
        max_pending: int = 64,
    ) -> None:
        self.auth = auth
        self.limits = limits
        self.max_sessions = max_sessions
        self.max_pending = max_pending
        self.accepting = accepting
        self.connections = 0
        self.pending = 0  # connections waiting for their hello
        self.pending_per_ip: Counter[str] = Counter()
        self.per_ip: Counter[str] = Counter()
        self.per_user: Counter[str] = Counter()
        self._proxies = {ipaddress.ip_address(p) for p in limits.trusted_proxies}
        self._handshake_identity: weakref.WeakKeyDictionary[Any, Identity] = weakref.WeakKeyDictionary()

    # ------------------------------------------------------------ handshake

    def client_ip(self, connection: Any, request: Request | None) -> str:
        """The peer's IP, or the one a trusted reverse proxy put in ``limits.client_ip_header``."""
        peer = connection.remote_address
        ip = str(peer[0]) if peer else "unknown"
        header = self.limits.client_ip_header
        if header and request is not None and self._trusted(ip):
            values = [v.strip() for value in request.headers.get_all(header) for v in value.split(",")]
            values = [v for v in values if v]
            if values:
                return values[-1]  # the entry the trusted proxy appended
        return ip

    def _trusted(self, ip: str) -> bool:
        try:
            return ipaddress.ip_address(ip) in self._proxies
        except ValueError:
            return False

    def check_handshake(self, connection: Any, request: Request) -> Response | None:
        """``process_request`` for the WebSocket path: a Response refuses, None goes on with the handshake."""
        if not self.accepting():
            return _refuse(503, "shutting_down", "the server is shutting down")
        origins, hosts = request.headers.get_all("Origin"), request.headers.get_all("Host")
        if len(origins) > 1 or len(hosts) > 1:
            return _refuse(400, "bad_request", "one Origin and one Host header at most")
        if not origin_allowed(origins[0] if origins else None, hosts[0] if hosts else None, self.auth.options):
            return _refuse(403, "bad_origin", "this page's origin may not open a session (auth.allowed_origins)")
        if self.auth.enabled:
            token = token_from_request(request.path, request.headers)
            if token is None and self.auth.options.require_at_handshake:
                return _refuse(401, "unauthorized", "a token is required (Authorization: Bearer or ?token=)")
            if token is not None:
                try:
                    self._handshake_identity[connection] = self.auth.verify(token)
                except ProtocolError as exc:
                    return _refuse(401, exc.code, exc.message)
        if self.connections - self.pending >= self.max_sessions:
            return _refuse(503, "server_full", f"the server is at its session limit ({self.max_sessions})")
        if self.pending >= self.max_pending:
            return _refuse(503, "server_full", f"{self.max_pending} connections are waiting for their hello")
        ip = self.client_ip(connection, request)
        cap = self.limits.max_sessions_per_ip
        if cap is not None and self.per_ip[ip] >= cap:
            return _refuse(503, "too_many_sessions", f"at most {cap} sessions per client address")
        cap = self.limits.max_pending_per_ip
        if cap is not None and self.pending_per_ip[ip] >= cap:
            return _refuse(503, "too_many_sessions", f"{cap} connections from this address are waiting for their hello")
        user = self._handshake_identity.get(connection, ANONYMOUS).user
        cap = self.limits.max_sessions_per_user
        if cap is not None and user is not None and self.per_user[user] >= cap:
            return _refuse(503, "too_many_sessions", f"at most {cap} sessions per user")
        return None

    # ------------------------------------------------------------ after the handshake

    @contextlib.contextmanager
    def connection(self, ws: Any) -> Iterator[Ticket]:
        """Count one open connection (per process and per IP) for as long as the block runs."""
        ticket = Ticket(self.client_ip(ws, ws.request), self._handshake_identity.pop(ws, ANONYMOUS), connection=ws)
        self.connections += 1
        self.pending += 1
        self.pending_per_ip[ticket.ip] += 1
        self.per_ip[ticket.ip] += 1
        try:
            yield ticket
        finally:
            self.connections -= 1
            self.session_opened(ticket)  # no longer waiting, either way
            self._release(self.per_ip, ticket.ip)
            if ticket.user_counted is not None:
                self._release(self.per_user, ticket.user_counted)

    def session_opened(self, ticket: Ticket) -> None:
        """The connection's hello opened a session: it stops counting as waiting for one."""
        if ticket.pending:
            ticket.pending = False
            self.pending -= 1
            self._release(self.pending_per_ip, ticket.ip)

    def check_ip(self, ticket: Ticket) -> None:
        """After hello: the per-IP cap, exact (parallel handshakes may all have passed the early check)."""
        cap = self.limits.max_sessions_per_ip
        if cap is not None and self.per_ip[ticket.ip] > cap:
            raise self._full(f"at most {cap} sessions per client address")

    def admit_user(self, ticket: Ticket, hello_token: str | None) -> Identity:
        """At hello: verify ``hello.token`` when given, then count the session against its user's cap."""
        identity = ticket.identity
        if self.auth.enabled and (hello_token is not None or identity.user is None):
            identity = self.auth.verify(hello_token)  # raises ProtocolError('unauthorized'), close 1008
        user = identity.user
        cap = self.limits.max_sessions_per_user
        if user is not None and ticket.user_counted is None:
            if cap is not None and self.per_user[user] >= cap:
                raise self._full(f"at most {cap} sessions per user")
            self.per_user[user] += 1
            ticket.user_counted = user
        ticket.identity = identity
        return identity

    @staticmethod
    def _full(message: str) -> ProtocolError:
        REFUSED_TOTAL.inc(code="too_many_sessions")
        return ProtocolError("too_many_sessions", message, fatal=True, close_code=CloseCode.TRY_AGAIN_LATER)

    @staticmethod
    def _release(counter: Counter[str], key: str) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]

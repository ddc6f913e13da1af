"""Plain HTTP on the WebSocket port: the demo page and its files, /healthz, /ready, /schema, /metrics.

``/healthz`` says the process is alive (200 while it runs); ``/ready`` whether it takes new sessions
(200, or 503 while draining or at its session cap): load balancers route on the second.

Answers are built as ``websockets`` responses from ``process_request``; a request for the
WebSocket path falls through to the handshake.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import mimetypes
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from transports.schema import build_schema
from vocab.errors import ConfigError
from vocab.metrics import METRICS

DEFAULT_WEB_ROOT = Path(__file__).resolve().parent.parent / "clients" / "web"
PLACEHOLDER_PAGE = b"""<!doctype html><meta charset="utf-8"><title>voxpipe</title>
<h1>voxpipe</h1><p>The server is running. Connect a WebSocket client to <code>/ws</code>.</p>
"""
_EXTRA_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}


def response(status: int, body: bytes, content_type: str, *, extra: dict[str, str] | None = None) -> Response:
    reasons = {
        200: "OK",
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        503: "Service Unavailable",
    }
    headers = Headers(
        [("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")]
    )
    for key, value in (extra or {}).items():
        headers[key] = value
    return Response(status, reasons.get(status, "Error"), headers, body)


def json_response(status: int, data: Any) -> Response:
    return response(status, json.dumps(data, indent=1).encode(), "application/json")


@cache
def _schema_bytes() -> bytes:
    return json.dumps(build_schema(), indent=1).encode()


def _static(web_root: Path, path: str) -> Response | None:
    """The file at ``path`` under ``web_root``, or None (404). Any path the file system cannot take (an
    embedded null byte, a name over NAME_MAX, a file that vanished) is simply not found, never an error."""
    rel = "index.html" if path in ("", "/") else path.lstrip("/")
    try:
        root = web_root.resolve()
        target = (root / rel).resolve()
        if root not in target.parents and target != root:
            return None
        if not target.is_file():
            if rel == "index.html":
                return response(200, PLACEHOLDER_PAGE, "text/html; charset=utf-8")
            return None
        body = target.read_bytes()
    except (OSError, ValueError):  # ValueError: "embedded null byte"; OSError: ENAMETOOLONG, EACCES, ...
        return None
    kind = _EXTRA_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind == "application/json":
        kind += "; charset=utf-8"
    return response(200, body, kind)


def web_root(configured: str | None) -> Path:
    """The folder served at ``GET /``: ``server.web_root``, or ``clients/web`` of the checkout voxpipe runs from.

    voxpipe is an application run from its checkout (``pip install -e .``), not a library: a copy of the
    packages without the checkout beside them has no demo page, and says so at start.
    """
    root = Path(configured) if configured else DEFAULT_WEB_ROOT
    if not root.is_dir():
        key = "server.web_root" if configured else "the demo page"
        raise ConfigError(
            f"{key}: folder {root} not found (voxpipe runs from its checkout: `pip install -e .` there, "
            "or set server.web_root)"
        )
    return root


def metrics_token(env_name: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The /metrics bearer token from the environment variable ``server.metrics_token_env`` names, or None."""
    if env_name is None:
        return None
    value = (os.environ if environ is None else environ).get(env_name, "")
    if not value:
        raise ConfigError(f"server.metrics_token_env: environment variable {env_name} is not set (or empty)")
    return value


def host_name(value: str) -> str | None:
    """The name in a ``Host`` header (``example.com:8765``, ``[::1]:80``), lower-cased; None when malformed."""
    try:
        return urlsplit("//" + value).hostname or None
    except ValueError:
        return None


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def is_loopback(bind_host: str) -> bool:
    """Whether the server listens on loopback only (``127.0.0.1``, ``::1``, ``localhost``)."""
    if bind_host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind_host).is_loopback
    except ValueError:
        return False  # "0.0.0.0", "::", "" and names: beyond loopback


@dataclass(frozen=True, slots=True)
class HostAllowList:
    """Host names the HTTP routes and the WebSocket handshake answer; another gets 403 (``bad_host``).

    Against DNS rebinding: a page at ``evil.example`` whose name was re-pointed at this server is same-origin
    with it for the browser, but its requests still say ``Host: evil.example``. IP literals are always
    answered (no name was rebound), so are requests without a Host header (no browser sends one).
    """

    names: frozenset[str]
    suffixes: tuple[str, ...] = ()  # from ``*.example.com`` entries: ``.example.com``

    @classmethod
    def for_server(cls, configured: list[str] | None, bind_host: str) -> HostAllowList | None:
        """``server.allowed_hosts``; when unset: none on loopback (a local proxy decides), else this machine's
        names (``localhost``, its hostname and FQDN). ``["*"]``: any Host, no check."""
        if configured is None:
            if is_loopback(bind_host):
                return None
            names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
            return cls(frozenset(names), (".localhost",))
        if "*" in configured:
            return None
        exact = {n.lower() for n in configured if not n.startswith("*.")}
        return cls(frozenset(exact), tuple(n[1:].lower() for n in configured if n.startswith("*.")))

    def allows(self, header: str | None) -> bool:
        if header is None:
            return True
        name = host_name(header)
        if name is None:
            return False
        return is_ip_literal(name) or name in self.names or name.endswith(self.suffixes)


class Routes:
    """``process_request`` for the server: returns a Response, or None to go on with the handshake."""

    def __init__(
        self,
        *,
        ws_path: str,
        web_root: Path,
        health: Callable[[], dict[str, Any]],
        admit: Callable[[Any, Request], Response | None] | None = None,
        metrics_token: str | None = None,
        hosts: HostAllowList | None = None,
        ready: Callable[[], bool] = lambda: True,
        extra_ws_paths: tuple[str, ...] = (),
    ) -> None:
        self.ws_path = ws_path
        self.ws_paths = (ws_path, *extra_ws_paths)  # the OpenAI Realtime endpoint's too
        self.web_root = web_root
        self.health = health
        self.ready = ready
        self.admit = admit  # the WebSocket path's gate (auth, caps): a Response refuses the handshake
        self.hosts = hosts  # None: any Host header
        self._metrics_auth = None if metrics_token is None else f"Bearer {metrics_token}".encode()

    def _metrics(self, request: Request) -> Response:
        if self._metrics_auth is not None:
            values = request.headers.get_all("Authorization")  # not .get(): two headers raise there
            given = values[0].encode() if len(values) == 1 else b""  # one credential, or none
            if not hmac.compare_digest(given, self._metrics_auth):
                return response(
                    401,
                    b"/metrics needs a bearer token\n",
                    "text/plain; charset=utf-8",
                    extra={"WWW-Authenticate": 'Bearer realm="voxpipe metrics"'},
                )
        return response(200, METRICS.render().encode(), "text/plain; version=0.0.4; charset=utf-8")

    def __call__(self, connection: Any, request: Request) -> Response | None:
        if self.hosts is not None:
            values = request.headers.get_all("Host")
            if len(values) > 1 or not self.hosts.allows(values[0] if values else None):
                return json_response(403, {"code": "bad_host", "message": "this server does not answer that Host"})
        path = unquote(urlsplit(request.path).path)
        if path in self.ws_paths:
            return self.admit(connection, request) if self.admit is not None else None
        if path == "/healthz":
            return json_response(200, self.health())
        if path == "/ready":
            ready = self.ready()
            return json_response(200 if ready else 503, {"ready": ready})
        if path == "/schema":
            return response(200, _schema_bytes(), "application/schema+json")
        if path == "/metrics":
            return self._metrics(request)
        found = _static(self.web_root, path)
        if found is not None:
            return found
        return response(404, b"not found\n", "text/plain; charset=utf-8")

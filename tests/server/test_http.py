"""server/http.py without sockets: the demo page and its files, /healthz, /schema, /metrics, 404, traversal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from server.http import DEFAULT_WEB_ROOT, HostAllowList, Routes, web_root
from vocab.errors import ConfigError


def routes(root: Path = DEFAULT_WEB_ROOT, **kwargs: Any) -> Routes:
    return Routes(ws_path="/ws", web_root=root, health=lambda: {"status": "ok"}, **kwargs)


def get(r: Routes, path: str, *headers: tuple[str, str]) -> Response:
    response = r(None, Request(path, Headers(list(headers))))
    assert response is not None
    return response


def test_the_demo_page_and_its_files_with_their_types() -> None:
    r = routes()
    page = get(r, "/")
    assert (page.status_code, page.headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert b"<html" in page.body.lower()
    script = get(r, "/app.js")
    assert script.headers["Content-Type"].startswith("text/javascript")
    assert script.headers["Cache-Control"] == "no-store"


def test_health_schema_and_metrics() -> None:
    r = routes()
    assert json.loads(get(r, "/healthz").body) == {"status": "ok"}
    schema = get(r, "/schema")
    assert schema.headers["Content-Type"] == "application/schema+json"
    assert "$defs" in json.loads(schema.body)
    metrics = get(r, "/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"# TYPE voxpipe_sessions_total counter" in metrics.body


def test_metrics_with_a_token_needs_it() -> None:
    r = routes(metrics_token="s3cret")
    assert get(r, "/metrics").status_code == 401
    assert get(r, "/metrics", ("Authorization", "Bearer wrong")).status_code == 401
    assert get(r, "/metrics", ("Authorization", "Bearer s3cret")).status_code == 200


def test_the_websocket_path_goes_on_to_the_handshake_through_the_gate() -> None:
    seen: list[str] = []

    def admit(_connection: Any, request: Request) -> None:
        seen.append(request.path)

    r = routes(admit=admit)
    assert r(None, Request("/ws?token=x", Headers())) is None
    assert seen == ["/ws?token=x"]


@pytest.mark.parametrize("path", ["/nope", "/../server/app.py", "/%2e%2e/config.yaml", "/vendor/"])
def test_unknown_files_and_traversal_are_404(path: str) -> None:
    assert get(routes(), path).status_code == 404


def test_a_folder_without_index_serves_a_placeholder_page(tmp_path: Path) -> None:
    page = get(routes(tmp_path), "/")
    assert page.status_code == 200
    assert b"The server is running" in page.body


def test_a_missing_web_root_is_a_start_up_error_naming_the_key(tmp_path: Path) -> None:
    assert web_root(None) == DEFAULT_WEB_ROOT
    with pytest.raises(ConfigError, match=r"server.web_root: folder .* not found"):
        web_root(str(tmp_path / "gone"))


def test_the_host_allow_list() -> None:
    assert HostAllowList.for_server(None, "127.0.0.1") is None  # on loopback: a local proxy decides
    assert HostAllowList.for_server(["*"], "0.0.0.0") is None
    beyond = HostAllowList.for_server(None, "0.0.0.0")
    assert beyond is not None
    for ok in ("localhost", "localhost:8765", "127.0.0.1:8765", "[::1]:80", "10.0.0.5", "app.localhost", None):
        assert beyond.allows(ok), ok
    for bad in ("evil.example", "evil.example:8765", "localhost.evil.example", "", "[::1"):
        assert not beyond.allows(bad), bad
    listed = HostAllowList.for_server(["Voice.Example.com", "*.corp.example"], "127.0.0.1")
    assert listed is not None
    assert listed.allows("voice.example.com:443")
    assert listed.allows("a.b.corp.example")
    assert not listed.allows("corp.example.evil")
    assert not listed.allows("localhost")


def test_routes_refuse_a_host_off_the_list_with_403() -> None:
    r = routes(hosts=HostAllowList(frozenset({"voice.example.com"})))
    assert get(r, "/healthz", ("Host", "evil.example")).status_code == 403
    assert get(r, "/healthz", ("Host", "voice.example.com")).status_code == 200
    assert get(r, "/healthz", ("Host", "voice.example.com"), ("Host", "evil.example")).status_code == 403

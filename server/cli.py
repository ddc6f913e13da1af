"""``voxpipe serve``, ``voxpipe check-config`` and ``voxpipe token``: start-up banner, SIGINT/SIGTERM drain,
worker processes (``--workers N``), logs as text or JSON lines (``--log-format``), and HS256 tokens for
``auth.mode: jwt``. A mistake is one line on stderr and exit status 2: a bad config key, or an address
already in use."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from server.auth import issue_token, resolve_secret
from server.config import Config, load_config
from server.logs import configure as configure_logging
from stages.registry import build_pipeline, describe_chain
from vocab.errors import ConfigError

DEFAULT_CONFIG = "config.yaml"


def _load(path: str, host: str | None, port: int | None) -> Config:
    config = load_config(path)
    server = config.server
    if host is not None:
        server = dataclasses.replace(server, host=host)
    if port is not None:
        server = dataclasses.replace(server, port=port)
    return dataclasses.replace(config, server=server)


class ListenError(Exception):
    """The server cannot listen where it was told to."""


def check_listen(host: str, port: int) -> None:
    """Fail fast (before loading models) when ``host:port`` is taken or not ours to use."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror} (check server.host or --host)") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise ListenError(_listen_message(host, port, exc)) from None


def _listen_message(host: str, port: int, exc: OSError) -> str:
    what = {
        errno.EADDRINUSE: "the address is already in use (another voxpipe, or another program)",
        errno.EACCES: "permission denied (ports below 1024 need privileges)",
        errno.EADDRNOTAVAIL: "no such address on this machine",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return f"cannot listen on {host}:{port}: {what}; choose another port with --port (or server.port)"


async def _serve(config: Config, log_format: str = "text") -> None:
    from server.app import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # JSON logs: the start-up lines go through logging too, so stderr holds nothing but JSON lines
    say = logging.getLogger("voxpipe.app").info if log_format == "json" else None
    async with serve(config, log=say) as running:
        print(f"voxpipe: open {running.http_url} in a browser (Ctrl-C to stop)", flush=True)
        await stop.wait()
        print("voxpipe: shutting down: finishing current turns, then closing sessions (1001)", flush=True)


def _print_token(path: str, user: str, ttl_s: float) -> int:
    auth = load_config(path).auth
    if auth.mode != "jwt":
        raise ConfigError(f"auth.mode is {auth.mode!r}: tokens are issued only for mode 'jwt'")
    if not user or ttl_s <= 0:
        raise ConfigError("token: --user must not be empty and --ttl-s must be > 0")
    secret = resolve_secret(auth, os.environ)
    print(issue_token(secret, user, ttl_s=ttl_s, issuer=auth.issuer, audience=auth.audience))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxpipe", description="Realtime voice-agent server")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="start the server")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: config.yaml)")
    run.add_argument("--host", help="override server.host")
    run.add_argument("--port", type=int, help="override server.port (0 = any free port)")
    run.add_argument(
        "--log-level", default=None, help="Python logging level (default: WARNING; INFO with --log-format json)"
    )
    run.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=os.environ.get("VOXPIPE_LOG_FORMAT", "text"),
        help="text lines, or one JSON object per line with a session_start/turn/session_end event each (default: text)",
    )
    run.add_argument(
        "--workers", type=int, default=0, help="run N worker processes on ports port..port+N-1 (default: one process)"
    )
    check = sub.add_parser("check-config", help="validate a config file and print the stage chain")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    tok = sub.add_parser("token", help="print an HS256 JWT for a user (auth.mode: jwt)")
    tok.add_argument("--config", default=DEFAULT_CONFIG, help="config file with the auth section")
    tok.add_argument("--user", required=True, help="the user id (JWT subject; per-user caps count it)")
    tok.add_argument("--ttl-s", type=float, default=3600.0, help="validity in seconds (default: 3600)")
    args = parser.parse_args(argv)

    try:
        if args.command == "check-config":
            config = load_config(args.config)
            specs = build_pipeline(config.pipeline)
            print(f"{Path(args.config)}: ok")
            print(describe_chain(specs))
            return 0
        if args.command == "token":
            return _print_token(args.config, args.user, args.ttl_s)
        configure_logging(args.log_level, args.log_format)
        config = _load(args.config, args.host, args.port)
        server = config.server
        if args.workers:
            return _serve_workers(args, config)
        check_listen(server.host, server.port)
        try:
            asyncio.run(_serve(config, args.log_format))
        except OSError as exc:  # lost the race for the port between the check and the bind
            if exc.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                raise
            raise ListenError(_listen_message(server.host, server.port, exc)) from None
        return 0
    except ConfigError as exc:
        print(f"voxpipe: config error: {exc.message}", file=sys.stderr)
        return 2
    except ListenError as exc:
        print(f"voxpipe: {exc}", file=sys.stderr)
        return 2


def _serve_workers(args: argparse.Namespace, config: Config) -> int:
    from server.workers import run_workers

    server = config.server
    if args.workers < 1 or server.port == 0:
        raise ConfigError("--workers: needs N >= 1 and a fixed server.port (worker i listens on port + i)")
    build_pipeline(config.pipeline)  # a bad pipeline fails once, here, not in every worker
    for i in range(args.workers):
        check_listen(server.host, server.port + i)
    os.environ["VOXPIPE_LOG_FORMAT"] = args.log_format  # the workers inherit it
    return run_workers(
        args.config,
        args.workers,
        host=server.host,
        port=server.port,
        log_level=args.log_level or "",  # "": the default for the log format
        secret_env=config.session.resume_secret_env,
    )


if __name__ == "__main__":
    sys.exit(main())

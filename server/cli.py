"""``voxpipe serve`` and ``voxpipe check-config``: start-up banner, and SIGINT/SIGTERM drain."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
from pathlib import Path

from server.config import Config, load_config
from server.errors import ConfigError
from stages.registry import build_pipeline, describe_chain

DEFAULT_CONFIG = "config.yaml"


def _load(path: str, host: str | None, port: int | None) -> Config:
    config = load_config(path)
    server = config.server
    if host is not None:
        server = dataclasses.replace(server, host=host)
    if port is not None:
        server = dataclasses.replace(server, port=port)
    return dataclasses.replace(config, server=server)


async def _serve(config: Config) -> None:
    from server.app import serve

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with serve(config) as running:
        print(f"voxpipe: open {running.http_url} in a browser (Ctrl-C to stop)", flush=True)
        await stop.wait()
        print("voxpipe: shutting down: finishing current turns, then closing sessions (1001)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="voxpipe", description="Realtime voice-agent server")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="start the server")
    run.add_argument("--config", default=DEFAULT_CONFIG, help="config file (default: config.yaml)")
    run.add_argument("--host", help="override server.host")
    run.add_argument("--port", type=int, help="override server.port (0 = any free port)")
    run.add_argument("--log-level", default="WARNING", help="Python logging level (default: WARNING)")
    check = sub.add_parser("check-config", help="validate a config file and print the stage chain")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)
    args = parser.parse_args(argv)

    try:
        if args.command == "check-config":
            config = load_config(args.config)
            specs = build_pipeline(config.pipeline)
            print(f"{Path(args.config)}: ok")
            print(describe_chain(specs))
            return 0
        logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
        config = _load(args.config, args.host, args.port)
        asyncio.run(_serve(config))
        return 0
    except ConfigError as exc:
        print(f"voxpipe: config error: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""A loopback TCP proxy the test can cut: what a dropped network looks like to a client and a server.

``cut()`` resets every connection through it (SO_LINGER 0: both ends get a TCP RST, no close frame, no
bye), while the proxy keeps accepting, so a client that reconnects gets through again. ``upstream`` can be
changed at any time (new connections go there): "the balancer sent the resume to another server".
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

PUMP_BYTES = 65536
LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST instead of FIN


def reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP reset."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    writer.transport.abort()


@dataclass(eq=False)  # hashed by identity: kept in a set while open
class Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)

    def cut(self) -> None:
        reset(self.client)
        reset(self.server)


@dataclass
class CuttableProxy:
    upstream_port: int
    port: int = 0
    accepted: int = 0  # client connections taken so far (a reconnect makes it grow)
    refuse: int = 0  # reset this many of the next connections at once (a server that is not back yet)
    cuts: int = 0
    links: set[Link] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        links = list(self.links)
        for link in links:
            link.cut()
        self.cuts += 1
        return len(links)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.refuse > 0:
            self.refuse -= 1
            reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            reset(writer)
            return
        link = Link(writer, up_writer)
        self.links.add(link)
        link.pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        try:
            await asyncio.gather(*link.pumps)
        finally:
            self.links.discard(link)
            for pump in link.pumps:
                pump.cancel()
            for w in (writer, up_writer):
                w.transport.abort()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Copy one direction until it ends; an end or an error on either side ends the link."""
        try:
            while data := await source.read(PUMP_BYTES):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if sink.can_write_eof() and not sink.is_closing():
                with contextlib.suppress(OSError):
                    sink.write_eof()

    def _track(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@contextlib.asynccontextmanager
async def cuttable_proxy(upstream_port: int) -> AsyncIterator[CuttableProxy]:
    """A proxy on a free loopback port in front of ``127.0.0.1:upstream_port``; closed on exit."""
    proxy = CuttableProxy(upstream_port)
    server = await asyncio.start_server(proxy._track, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        proxy.cut()
        for task in list(proxy._tasks):
            task.cancel()
        await asyncio.gather(*proxy._tasks, return_exceptions=True)
        await server.wait_closed()

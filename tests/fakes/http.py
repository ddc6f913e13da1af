"""A tiny HTTP/1.1 server on loopback (raw asyncio, no framework) for fake model services.

Keep-alive, Content-Length and chunked request bodies, chunked streaming responses. Every request
becomes an ``Exchange`` the fake answers through; it records whether the client disconnected before
the response was complete, which is how tests prove that barge-in closed the upstream request.
``down()``/``up()`` close and reopen the listening socket on the same port (connection refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
        """multipart/form-data: (text fields, files as name -> (filename, bytes))."""
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + self.body)
        fields: dict[str, str] = {}
        files: dict[str, tuple[str, bytes]] = {}
        for part in message.iter_parts():
            name = str(part.get_param("name", header="content-disposition"))
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            filename = part.get_filename()
            if filename is not None:
                files[name] = (filename, payload)
            else:
                fields[name] = payload.decode()
        return fields, files


@dataclass
class Exchange:
    """One request and its response; the fake's handler writes the response with these calls."""

    request: Request
    writer: asyncio.StreamWriter
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False  # the whole response was sent
    aborted: bool = False  # the fake cut the connection on purpose
    sent_bytes: int = 0  # of the response so far (head included)
    _chunked: bool = False

    async def _write(self, data: bytes) -> None:
        if self.disconnected.is_set():
            raise ConnectionResetError("client gone")
        try:
            self.writer.write(data)
            self.sent_bytes += len(data)
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self.disconnected.set()
            raise ConnectionResetError("client gone") from None

    async def send_head(self, status: int, headers: dict[str, str] | None = None, *, length: int | None = None) -> None:
        """Status line and headers; without ``length`` the body is chunked (a stream)."""
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if length is None:
            lines.append("Transfer-Encoding: chunked")
            self._chunked = True
        else:
            lines.append(f"Content-Length: {length}")
        await self._write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def send(self, data: bytes) -> None:
        if not data:
            return
        await self._write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    async def end(self) -> None:
        if self._chunked:
            await self._write(b"0\r\n\r\n")
        self.finished = True

    async def respond(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        await self.send_head(status, {"Content-Type": content_type, **(headers or {})}, length=len(body))
        await self._write(body)
        self.finished = True

    async def respond_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        await self.respond(status, json.dumps(obj).encode(), "application/json", headers)

    def abort(self) -> None:
        """Cut the connection now (a stream that stops midway)."""
        self.aborted = True
        self.writer.transport.abort()

    async def hang(self, max_s: float = 30.0) -> None:
        """Send nothing until the client gives up (or ``max_s``)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max_s):
                await self.disconnected.wait()


Handler = Callable[[Exchange], Awaitable[None]]


class FakeHttpServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.server: asyncio.Server | None = None
        self.exchanges: list[Exchange] = []
        self.connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self) -> list[Request]:
        return [ex.request for ex in self.exchanges]

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop listening and drop every open connection: new requests get connection refused."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self._writers):
            writer.transport.abort()  # each handler then sees the disconnect and ends by itself
        if self._tasks:
            _done, stuck = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in stuck:
                task.cancel()

    async def __aenter__(self) -> FakeHttpServer:
        await self.up()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        buffer = bytearray()
        try:
            while True:
                request = await _read_request(reader, buffer)
                if request is None:
                    return
                exchange = Exchange(request, writer)
                self.exchanges.append(exchange)
                watcher = asyncio.create_task(_watch(reader, buffer, exchange))
                try:
                    await self.handler(exchange)
                except ConnectionResetError:
                    pass
                finally:
                    watcher.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watcher
                if exchange.aborted or exchange.disconnected.is_set() or not exchange.finished:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()


async def _watch(reader: asyncio.StreamReader, buffer: bytearray, exchange: Exchange) -> None:
    """While a response is written, notice the client closing the connection."""
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                exchange.disconnected.set()
                return
            buffer += data  # a pipelined next request: keep it
    except ConnectionError:
        exchange.disconnected.set()


async def _fill(reader: asyncio.StreamReader, buffer: bytearray) -> bool:
    data = await reader.read(65536)
    buffer += data
    return bool(data)


async def _read_request(reader: asyncio.StreamReader, buffer: bytearray) -> Request | None:
    while b"\r\n\r\n" not in buffer:
        if not await _fill(reader, buffer):
            return None
    end = buffer.index(b"\r\n\r\n")
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    del buffer[: end + 4]
    method, target, _version = head[0].split(" ", 2)
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = bytearray()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            while b"\r\n" not in buffer:
                if not await _fill(reader, buffer):
                    return None
            line_end = buffer.index(b"\r\n")
            size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
            while len(buffer) < line_end + 2 + size + 2:
                if not await _fill(reader, buffer):
                    return None
            body += buffer[line_end + 2 : line_end + 2 + size]
            del buffer[: line_end + 2 + size + 2]
            if size == 0:
                break
    else:
        length = int(headers.get("content-length", "0"))
        while len(buffer) < length:
            if not await _fill(reader, buffer):
                return None
        body += buffer[:length]
        del buffer[:length]
    return Request(method, target, headers, bytes(body))

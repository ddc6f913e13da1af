"""A raw WebSocket client over a plain TCP socket, for frames a well-behaved library will not send.

Hand-built handshake and frames (any opcode, bad UTF-8, lying lengths), a socket that can stop
reading (small receive buffer), and an abrupt TCP reset (SO_LINGER 0).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from dataclasses import dataclass, field

import msgpack

OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0x1, 0x2, 0x8, 0x9


def frame_bytes(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, declared_len: int | None = None
) -> bytes:
    """One WebSocket frame; ``declared_len`` lies about the payload length in the header."""
    length = len(payload) if declared_len is None else declared_len
    head = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@dataclass
class RawWs:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    async def send_frame(self, opcode: int, payload: bytes, **kwargs: object) -> None:
        self.writer.write(frame_bytes(opcode, payload, **kwargs))  # type: ignore[arg-type]
        await self.writer.drain()

    async def send_msg(self, msg: dict[str, object]) -> None:
        await self.send_frame(OP_BINARY, msgpack.packb(msg, use_bin_type=True))

    async def read_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout):
            b0, b1 = await self.reader.readexactly(2)
            length = b1 & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
            return b0 & 0x0F, await self.reader.readexactly(length)

    async def read_msg(self, timeout: float = 5.0) -> dict[str, object]:
        while True:
            opcode, payload = await self.read_frame(timeout)
            if opcode == OP_BINARY:
                return msgpack.unpackb(payload)  # type: ignore[no-any-return]
            if opcode == OP_CLOSE:
                raise ConnectionError(f"closed {close_code(payload)}")

    async def read_close_code(self, timeout: float = 5.0, *, hang_up: bool = True) -> int | None:
        """Frames until the close frame; its code (None when the TCP connection ends without one).

        ``hang_up`` closes our side afterwards, as a client should; False keeps the socket open."""
        try:
            while True:
                opcode, payload = await self.read_frame(timeout)
                if opcode == OP_CLOSE:
                    return close_code(payload)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            return None
        finally:
            if hang_up:
                self.writer.close()

    def stop_reading(self) -> None:
        """Stop taking bytes off the socket (asyncio would otherwise buffer megabytes for us)."""
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]

    def resume_reading(self) -> None:
        self.writer.transport.resume_reading()  # type: ignore[attr-defined]

    def reset(self) -> None:
        """Vanish: close with SO_LINGER 0, so the peer gets a TCP RST, no close frame, no FIN."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def close_code(payload: bytes) -> int | None:
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None


async def open_tcp(port: int, *, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock, limit=1 << 22)


async def open_raw(
    port: int,
    path: str = "/ws",
    *,
    headers: dict[str, str] | None = None,
    rcvbuf: int | None = None,
    hello: bool = True,
) -> RawWs:
    """Handshake (and, when the server upgraded and ``hello``, a msgpack hello answered by ``ready``)."""
    reader, writer = await open_tcp(port, rcvbuf=rcvbuf)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    raw = RawWs(reader, writer, status=int(status_line.split()[1]))
    raw.headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
    if raw.status != 101:
        length = int(raw.headers.get("content-length", "0"))
        raw.body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
        return raw
    if hello:
        await raw.send_msg({"type": "hello", "protocol": 1})
        ready = await raw.read_msg()
        assert ready["type"] == "ready", ready
    return raw

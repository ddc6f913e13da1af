"""Real Redis and HAProxy for the tests, on free loopback ports, started and stopped by the test.

Debian's ``redis-server`` and ``haproxy`` (scripts/install-system-deps.sh installs both); a test whose
binary is missing is skipped with the reason printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.waiting import wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports (workers listen on port + i)."""
    for _ in range(200):
        base = free_port()
        socks: list[socket.socket] = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def require_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        reason = f"{name} is not installed (scripts/install-system-deps.sh installs it)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    return path


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """A throwaway ``redis-server`` (no persistence) on a free port; yields its URL."""
    binary = require_binary("redis-server")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_until(lambda: _accepts(port), 10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        await proc.wait()


@contextlib.contextmanager
def haproxy(config_text: str, workdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """HAProxy running ``config_text`` (checked with ``-c`` first); stopped on exit."""
    binary = require_binary("haproxy")
    path = workdir / "haproxy.cfg"
    path.write_text(config_text)
    check = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([binary, "-db", "-f", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(10)

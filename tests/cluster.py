"""A real deployment on loopback for the tests: ``voxpipe serve --workers 3`` behind HAProxy (the shipped
deploy/haproxy.cfg, as it is), sessions in a real redis-server; and a client that resumes as real ones must.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.client import Client, Message, test_config
from tests.services import free_port, free_ports, haproxy, redis_server
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 3


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")
    except OSError:
        return 0, None


@dataclass
class Cluster:
    url: str  # ws:// of HAProxy's frontend
    worker_ports: list[int]
    stats_url: str
    proc: asyncio.subprocess.Process

    def worker_url(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.worker_ports[i]}/ws"

    def health(self, i: int) -> Any:
        return get_json(f"http://127.0.0.1:{self.worker_ports[i]}/healthz")[1]

    def ready(self, i: int) -> bool:
        return get_json(f"http://127.0.0.1:{self.worker_ports[i]}/ready")[0] == 200

    def pid(self, i: int) -> int:
        health = self.health(i)
        assert health is not None, f"worker {i} is not answering"
        return int(health["pid"])

    def haproxy_status(self) -> dict[str, str]:
        """w1.. -> UP / DOWN / ..., from HAProxy's own stats page."""
        try:
            with urllib.request.urlopen(self.stats_url + ";csv", timeout=2) as response:
                rows = response.read().decode().splitlines()
        except OSError:
            return {}  # not up (yet)
        header = rows[0].lstrip("# ").split(",")
        out = {}
        for row in rows[1:]:
            values = dict(zip(header, row.split(","), strict=False))
            if values.get("pxname") == "workers" and values.get("svname", "").startswith("w"):
                out[values["svname"]] = values["status"]
        return out


@contextlib.asynccontextmanager
async def cluster(tmp_path: Path, **sections: Any) -> AsyncIterator[Cluster]:
    async with redis_server() as redis_url:
        base = free_ports(WORKERS)
        front, stats = free_port(), free_port()
        config = test_config(
            server={"host": "127.0.0.1", "port": base, "drain_timeout_s": 10.0, "close_timeout_s": 2.0},
            state={"backend": "redis"},
            limits={"client_ip_header": "X-Forwarded-For", "max_sessions_per_ip": None},
            **sections,
        )
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        env = {**os.environ, "VOXPIPE_REDIS_URL": redis_url}
        args = [sys.executable, "-m", "server", "serve", "--config", str(path), "--workers", str(WORKERS)]
        proc = await asyncio.create_subprocess_exec(*args, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        proxy_env = {
            "VOXPIPE_LISTEN": f"127.0.0.1:{front}",
            "VOXPIPE_STATS": f"127.0.0.1:{stats}",
            **{f"VOXPIPE_W{i + 1}": f"127.0.0.1:{base + i}" for i in range(WORKERS)},
        }
        found = Cluster(f"ws://127.0.0.1:{front}/ws", [base + i for i in range(WORKERS)], "", proc)
        found.stats_url = f"http://127.0.0.1:{stats}/stats"
        try:
            await wait_until(lambda: all(found.ready(i) for i in range(WORKERS)), 60)
            old = {k: os.environ.get(k) for k in proxy_env}
            os.environ.update(proxy_env)  # HAProxy expands "${VAR}" from its environment
            try:
                with haproxy((ROOT / "deploy" / "haproxy.cfg").read_text(), tmp_path):
                    await wait_until(lambda: set(found.haproxy_status().values()) == {"UP"}, 20)
                    yield found
            finally:
                for key, value in old.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    async with asyncio.timeout(30):
                        await proc.wait()
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


@dataclass
class Conversation:
    """One user's conversation through the balancer; it resumes by itself when its socket goes."""

    url: str
    client: Client | None = None
    session: str = ""
    token: str = ""
    last_seq: int = 0
    clients: list[Client] = field(default_factory=list)  # every connection it had, in order
    resumes: int = 0
    fresh_starts: int = 0  # resumes that came back as a new session: a lost conversation
    lost_turns: int = 0  # turns that never ended (their worker was killed mid-turn) and were asked again
    newest_turn: int = 0  # the highest turn id seen: an exchange's reply is of a newer turn
    memory: list[int] = field(default_factory=list)  # "I remember N messages", reply by reply
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def _open(self, hello: dict[str, Any], url: str) -> None:
        for attempt in range(40):  # a worker may be restarting: back off, as a real client does
            try:
                self.client = await self._stack.enter_async_context(Client.connect(url, hello=hello))
                self.clients.append(self.client)
                return
            except (OSError, InvalidStatus, ConnectionClosed, TimeoutError):
                await asyncio.sleep(min(0.05 * 2**attempt, 0.5))  # backoff between tries, not a wait for state
        raise AssertionError(f"could not reconnect to {url}")

    async def start(self, url: str | None = None) -> None:
        """The first connection: through the balancer, or straight to a worker (``url``)."""
        await self._open({}, url or self.url)
        self._took(self.client)

    def _took(self, client: Client | None) -> None:
        assert client is not None
        ready = client.ready
        if self.session and ready["session"] != self.session:
            self.fresh_starts += 1
        self.session, self.token = ready["session"], ready["resume_token"]

    async def resume(self) -> None:
        await self._stack.aclose()
        self._stack = contextlib.AsyncExitStack()
        # the highest session_seq received, ready aside (its number comes before the replay's)
        received = [x["_seq"] for c in self.clients for x in c.received if "_seq" in x and x["type"] != "ready"]
        self.last_seq = max([self.last_seq, *received])
        hello = {"resume": {"session": self.session, "token": self.token, "last_session_seq": self.last_seq}}
        await self._open(hello, f"{self.url}?session={self.session}")
        self.resumes += 1
        self._took(self.client)
        assert self.client is not None
        # the replay comes right after ready; this ping's pong comes after it
        await self.client.send({"type": "ping", "id": f"replayed-{self.resumes}"})

    async def _next(self) -> Message:
        """The next message; when the socket closes (after ``going_away``, or just gone), everything it
        still delivered is read first, then the conversation resumes."""
        while True:
            assert self.client is not None
            try:
                msg = await self.client.recv(15)
            except ConnectionClosed:
                await self.resume()
                continue
            if msg["type"] == "ready":
                continue
            self.last_seq = max(self.last_seq, msg["_seq"])
            turn = msg.get("turn")
            if isinstance(turn, int):
                self.newest_turn = max(self.newest_turn, turn)
            return msg

    async def exchange(self, text: str) -> str:
        """Send ``text`` and return the reply once its turn ended (cut or not), however many resumes it took."""
        assert self.client is not None
        turn: int | None = None
        seen = [x["turn"] for x in self.client.received if isinstance(x.get("turn"), int)]
        floor = max([self.newest_turn, *seen])  # turns up to this one were there before this text
        with contextlib.suppress(ConnectionClosed):  # if it fails, the next read resumes; the text is asked again
            await self.client.send({"type": "text", "text": text})
        reply: list[str] = []
        while True:
            msg = await self._next()
            if msg["type"] == "pong" and str(msg.get("id", "")).startswith("replayed-"):
                # the replay is over and the turn did not end in it: the text never reached the old worker,
                # or the worker died mid-turn (kill -9: no end was logged). Ask again.
                assert self.client is not None
                self.lost_turns += turn is not None
                turn, reply = None, []
                await self.client.send({"type": "text", "text": text})
                continue
            if msg["type"] == "reply" and msg["turn"] > floor and (turn is None or msg["turn"] == turn):
                turn = msg["turn"]
                reply.append(msg["text"])
            if turn is not None and msg.get("turn") == turn and msg["type"] in ("turn_end", "interrupted"):
                text_out = "".join(reply) if msg["type"] == "turn_end" else msg["text"]
                if "I remember " in text_out:
                    self.memory.append(int(text_out.split("I remember ")[1].split()[0]))
                return text_out

    @property
    def seqs(self) -> list[int]:
        """The session_seq of every message received, over every connection."""
        return [x["_seq"] for c in self.clients for x in c.received if "_seq" in x]

    async def close(self) -> None:
        await self._stack.aclose()

"""``voxpipe serve --workers N``: N worker processes, each a whole server on its own port, and a parent
that restarts a worker that crashed and forwards SIGTERM/SIGINT (every worker drains, then exits).

Worker ``i`` listens on ``port + i`` (a load balancer such as deploy/haproxy.cfg spreads sessions over
them and routes resumes by the ``session`` query parameter). Each loads its models once. The workers
share one resume secret (the configured environment variable, or one the parent makes for them), so a
resume is accepted by any of them; with ``state.backend: redis`` any of them can restore the conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_S = 60.0  # a worker up this long has its restart backoff reset


def say(text: str) -> None:
    print(f"voxpipe[parent]: {text}", file=sys.stderr, flush=True)


@dataclass(slots=True)
class Worker:
    index: int
    port: int
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    crashes_in_a_row: int = 0
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(
        self, config_path: str, workers: int, *, host: str, port: int, log_level: str, secret_env: str
    ) -> None:
        self.config_path = config_path
        self.host = host
        self.log_level = log_level
        self.workers = [Worker(i, port + i) for i in range(workers)]
        self.stopping = False
        self.env = dict(os.environ)
        if not self.env.get(secret_env):
            self.env[secret_env] = secrets.token_hex(32)  # one secret for all: a resume lands on any of them

    async def _start(self, worker: Worker) -> None:
        args = [sys.executable, "-m", "server", "serve", "--config", self.config_path]
        args += ["--host", self.host, "--port", str(worker.port), "--log-level", self.log_level]
        worker.proc = await asyncio.create_subprocess_exec(*args, env={**self.env, "VOXPIPE_WORKER": str(worker.index)})
        worker.started_at = time.monotonic()
        worker.exited.clear()
        say(f"worker {worker.index} started (pid {worker.proc.pid}, port {worker.port})")

    async def _watch(self, worker: Worker) -> None:
        """Keep one worker running until the parent stops; a crash restarts it after a growing pause."""
        while True:
            assert worker.proc is not None
            code = await worker.proc.wait()
            worker.exited.set()
            if self.stopping:
                return
            up_s = time.monotonic() - worker.started_at
            worker.crashes_in_a_row = 1 if up_s > STABLE_S else worker.crashes_in_a_row + 1
            pause_s = RESTART_BACKOFF_S[min(worker.crashes_in_a_row, len(RESTART_BACKOFF_S)) - 1]
            say(f"worker {worker.index} exited with {code} after {up_s:.0f} s; restarting in {pause_s:g} s")
            await asyncio.sleep(pause_s)
            if self.stopping:
                return
            worker.restarts += 1
            await self._start(worker)

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        for worker in self.workers:
            await self._start(worker)
        watchers = [asyncio.create_task(self._watch(w), name=f"watch-{w.index}") for w in self.workers]
        try:
            await stop.wait()
        finally:
            self.stopping = True
            say("stopping: every worker drains its sessions, then exits")
            for worker in self.workers:
                if worker.proc is not None and worker.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        worker.proc.send_signal(signal.SIGTERM)
            for worker in self.workers:
                if worker.proc is not None and worker.proc.returncode is None:
                    await worker.proc.wait()
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        return 0


def run_workers(config_path: str, workers: int, *, host: str, port: int, log_level: str, secret_env: str) -> int:
    supervisor = Supervisor(config_path, workers, host=host, port=port, log_level=log_level, secret_env=secret_env)
    return asyncio.run(supervisor.run())

"""Past one process: real-time sessions per host with N workers behind HAProxy, HAProxy's cost per message,
and the time a resume takes after a dropped socket (same worker and another one, state in Redis).

    .venv/bin/python bench/scale.py [--quick] [--max-k 600]

Everything is real and on loopback: worker processes (``bench/scale_worker.py``: voxpipe's server with the
benchmark echo engine registered, the same graph as B2: a cheap VAD-like stage whose frames come back as
paced agent audio), HAProxy running deploy/haproxy.cfg as shipped, a real redis-server. The load generator
is one Python process (``websockets`` client) sending a 20 ms audio frame per session every 20 ms and timing
each frame of agent audio against its input frame's due time: a K holds when p99 lateness < 20 ms and >= 98 %
of the frames came back. Writes bench/results/scale-<date>.json and prints a table.
On 2 cores the load generator shares the machine: with N = 1 the worker and the generator each get a core;
with N = 2 the two workers and the generator share both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import msgpack  # noqa: E402
import yaml  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from bench.common import FRAME_S, pcm_frame, percentile  # noqa: E402

RESULTS = ROOT / "bench" / "results"
P99_MS = 20.0
DELIVERED = 0.98


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def log(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------- the deployment


@contextlib.asynccontextmanager
async def redis() -> AsyncIterator[str]:
    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = await asyncio.create_subprocess_exec(*args, stdout=subprocess.DEVNULL)
    try:
        await wait_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        await proc.wait()


async def wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


@contextlib.asynccontextmanager
async def workers(n: int, redis_url: str, tmp: Path, cpus: list[int | None]) -> AsyncIterator[list[int]]:
    ports = [free_port() for _ in range(n)]
    config = {
        "server": {"host": "127.0.0.1", "max_sessions": 5000, "max_queue_frames": 64},
        "session": {"lead_ms": 40},
        "state": {"backend": "redis"},
        "limits": {"max_sessions_per_ip": None, "messages_per_s": None, "client_ip_header": "X-Forwarded-For"},
        "pipeline": [{"name": "vad", "engine": "bench_vad"}, {"name": "out", "engine": "passthrough", "type": "audio"}],
    }
    path = tmp / "scale.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "VOXPIPE_REDIS_URL": redis_url, "VOXPIPE_RESUME_SECRET": "b" * 32}
    procs = []
    for port, cpu in zip(ports, cpus, strict=False):
        args = [sys.executable, str(ROOT / "bench" / "scale_worker.py"), "serve", "--config", str(path)]
        args += ["--port", str(port)]
        if cpu is not None:
            args = ["taskset", "-c", str(cpu), *args]
        procs.append(await asyncio.create_subprocess_exec(*args, env=env, stderr=subprocess.DEVNULL))
    try:
        for port in ports:
            await wait_port(port)
        yield ports
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await proc.wait()


@contextlib.asynccontextmanager
async def haproxy(ports: list[int], tmp: Path) -> AsyncIterator[int]:
    front, stats = free_port(), free_port()
    addresses = [f"127.0.0.1:{p}" for p in ports]
    while len(addresses) < 3:  # the shipped file names three workers: fewer workers repeat the last one
        addresses.append(addresses[-1])
    env = {**os.environ, "VOXPIPE_LISTEN": f"127.0.0.1:{front}", "VOXPIPE_STATS": f"127.0.0.1:{stats}"}
    env.update({f"VOXPIPE_W{i + 1}": a for i, a in enumerate(addresses)})
    args = ["haproxy", "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")]
    proc = await asyncio.create_subprocess_exec(*args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_port(front)
        await asyncio.sleep(1.5)  # three health checks (inter 500ms, rise 2): the workers are UP
        yield front
    finally:
        proc.terminate()
        await proc.wait()


# ---------------------------------------------------------------- clients


HELLO = {
    "type": "hello",
    "protocol": 1,
    "audio_in": {"rate": 16000},
    "audio_out": {"rate": 16000},
    "subscribe": ["out"],
}


async def open_session(port: int, query: str = "", hello: dict[str, Any] | None = None) -> tuple[ClientConnection, Any]:
    ws = await connect(f"ws://127.0.0.1:{port}/ws{query}", max_size=None, compression=None)
    await ws.send(msgpack.packb({**HELLO, **(hello or {})}))
    while True:
        msg = msgpack.unpackb(await ws.recv())
        if msg["type"] == "ready":
            return ws, msg


async def sessions_hold(port: int, k: int, *, warm_s: float, measure_s: float) -> dict[str, Any]:
    """K real-time sessions against ``port``: p50/p99 lateness of agent audio frames, share delivered."""
    socks = [(await open_session(port))[0] for _ in range(k)]
    frame = msgpack.packb({"type": "audio", "data": pcm_frame()})
    t0 = time.perf_counter() + 0.2
    lo, hi = t0 + warm_s, t0 + warm_s + measure_s
    late: list[float] = []
    phase = [(i % 10) * FRAME_S / 10 for i in range(k)]

    async def send(i: int, ws: ClientConnection) -> None:
        n = 0
        while (due := t0 + phase[i] + n * FRAME_S) < hi + 0.1:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await ws.send(frame)
            n += 1

    async def receive(i: int, ws: ClientConnection) -> None:
        first: float | None = None
        with contextlib.suppress(Exception):
            while True:
                msg = msgpack.unpackb(await ws.recv())
                if msg.get("type") != "audio":
                    continue
                now = time.perf_counter()
                if first is None:
                    first = t0 + phase[i]  # the first frame's due time: output k belongs to input k
                    base = msg["seq"]
                if lo <= now < hi:
                    late.append(now - (first + (msg["seq"] - base) * FRAME_S))

    tasks = [asyncio.create_task(receive(i, ws)) for i, ws in enumerate(socks)]
    senders = [asyncio.create_task(send(i, ws)) for i, ws in enumerate(socks)]
    await asyncio.gather(*senders)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*(ws.close() for ws in socks), return_exceptions=True)
    late_ms = [x * 1000 for x in late]
    expected = k * measure_s / FRAME_S
    return {
        "k": k,
        "p50_ms": percentile(late_ms, 50),
        "p99_ms": percentile(late_ms, 99),
        "delivered": len(late_ms) / expected,
    }


async def capacity(port: int, *, start_k: int, max_k: int, quick: bool) -> tuple[int, list[dict[str, Any]]]:
    """The largest K that holds, by doubling then bisecting."""
    warm_s, measure_s = (0.5, 1.5) if quick else (1.0, 3.0)
    runs: list[dict[str, Any]] = []
    good, bad = 0, max_k + 1
    k = start_k
    while bad - good > max(10, good // 10):
        result = await sessions_hold(port, k, warm_s=warm_s, measure_s=measure_s)
        ok = result["p99_ms"] < P99_MS and result["delivered"] >= DELIVERED
        result["ok"] = ok
        runs.append(result)
        log(
            f"   K={k:4d}  p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms  "
            f"delivered {result['delivered']:.1%}  {'ok' if ok else 'over'}"
        )
        if ok:
            good = k
            k = min(max_k, k * 2) if bad > max_k else (good + bad) // 2
        else:
            bad = k
            k = (good + bad) // 2
        if k in (good, bad):
            break
    return good, runs


async def round_trips(port: int, n: int) -> dict[str, float]:
    ws, _ = await open_session(port)
    times: list[float] = []
    for i in range(n):
        started = time.perf_counter()
        await ws.send(msgpack.packb({"type": "ping", "id": i}))
        while msgpack.unpackb(await ws.recv()).get("type") != "pong":
            pass
        times.append((time.perf_counter() - started) * 1e6)
    await ws.close()
    return {"p50_us": percentile(times, 50), "p99_us": percentile(times, 99)}


async def resume_times(dial: int, resume_port: int, n: int) -> dict[str, float]:
    """A session opened on ``dial``, its socket reset, resumed through ``resume_port``: ms to ``ready``."""
    times: list[float] = []
    for _ in range(n):
        ws, ready = await open_session(dial)
        ws.transport.abort()
        hello = {"resume": {"session": ready["session"], "token": ready["resume_token"], "last_session_seq": 1}}
        started = time.perf_counter()
        for _attempt in range(200):  # the server notices the reset and holds the session first
            again, answer = await open_session(resume_port, f"?session={ready['session']}", hello)
            if answer["resumed"]:
                break
            await again.close()
        else:
            raise RuntimeError("resume kept failing")
        times.append((time.perf_counter() - started) * 1000)
        await again.close()
    return {"p50_ms": percentile(times, 50), "p99_ms": percentile(times, 99), "n": n}


# ---------------------------------------------------------------- the run


async def main(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    out: dict[str, Any] = {"date": dt.datetime.now().isoformat(timespec="seconds"), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        async with redis() as redis_url:
            os.sched_setaffinity(0, {1})  # the load generator on core 1
            log(">> 1 worker on core 0, clients straight to it")
            async with workers(1, redis_url, tmp, [0]) as ports:
                out["rtt_direct"] = await round_trips(ports[0], 300 if args.quick else 2000)
                k, runs = await capacity(ports[0], start_k=50, max_k=args.max_k, quick=args.quick)
                out["direct_1"] = {"sessions": k, "runs": runs}
                async with haproxy(ports, tmp) as front:
                    log(">> the same worker behind HAProxy")
                    out["rtt_haproxy"] = await round_trips(front, 300 if args.quick else 2000)
                    k, runs = await capacity(front, start_k=50, max_k=args.max_k, quick=args.quick)
                    out["haproxy_1"] = {"sessions": k, "runs": runs}
            os.sched_setaffinity(0, {0, 1})
            log(">> 2 workers (cores 0 and 1) behind HAProxy; the clients share the cores")
            async with workers(2, redis_url, tmp, [0, 1]) as ports, haproxy(ports, tmp) as front:
                k, runs = await capacity(front, start_k=50, max_k=args.max_k, quick=args.quick)
                out["haproxy_2"] = {"sessions": k, "runs": runs}
                n = 20 if args.quick else 100
                log(">> resume after a TCP reset: the same worker (through HAProxy), another worker (Redis)")
                out["resume_same"] = await resume_times(front, front, n)
                out["resume_other"] = await resume_times(ports[0], ports[1], n)
    return out


def table(r: dict[str, Any]) -> str:
    rows = [
        "| figure | value |",
        "| --- | ---: |",
        f"| real-time sessions, 1 worker, direct | {r['direct_1']['sessions']} |",
        f"| real-time sessions, 1 worker behind HAProxy | {r['haproxy_1']['sessions']} |",
        f"| real-time sessions, 2 workers behind HAProxy (2 cores, shared with the load generator) | "
        f"{r['haproxy_2']['sessions']} |",
        f"| ping round trip direct p50 / p99, µs | {r['rtt_direct']['p50_us']:.0f} / {r['rtt_direct']['p99_us']:.0f} |",
        f"| ping round trip via HAProxy p50 / p99, µs | {r['rtt_haproxy']['p50_us']:.0f} / "
        f"{r['rtt_haproxy']['p99_us']:.0f} |",
        f"| resume after a drop, same worker p50 / p99, ms | {r['resume_same']['p50_ms']:.1f} / "
        f"{r['resume_same']['p99_ms']:.1f} |",
        f"| resume after a drop, another worker (Redis) p50 / p99, ms | {r['resume_other']['p50_ms']:.1f} / "
        f"{r['resume_other']['p99_ms']:.1f} |",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="shorter windows and fewer samples (~2 min)")
    parser.add_argument("--max-k", type=int, default=800)
    result = asyncio.run(main(parser.parse_args()))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"scale-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"   results: {path.relative_to(ROOT)}")

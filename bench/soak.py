"""Soak: many connect/hello/talk/interrupt/close cycles against a server subprocess; looks for leaks.

    python bench/soak.py                              # 1,000 warm-up + 2,000 measured cycles, 50 at a time
    python bench/soak.py --cycles 300 --warmup 300    # a quick look

The server (``python -m server serve``) runs the deterministic test stages. Each cycle: connect, hello,
speak (tone then silence, or a text), wait for the reply's first audio, interrupt, wait for
``interrupted``, then ``bye`` (every fourth cycle drops the TCP connection mid-turn instead).
Reports the server's RSS, open file descriptors and asyncio task count (from /healthz) at the start,
after a warm-up, every ``--every`` cycles, and at the end; saves JSON to bench/results/. Targets: RSS
growth < 5 % from the warm process to the end, no leaked tasks or file descriptors. (A fresh process
grows for its first ~1,000 cycles at 50 concurrent while the allocator reaches its high-water mark;
the warm-up is there so that growth is not mistaken for a leak. The start figures are reported too.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.client import Client, silence, test_config, tone  # noqa: E402

RESULTS = ROOT / "bench" / "results"


@dataclass
class Snapshot:
    label: str
    after_cycles: int
    rss_mib: float
    fds: int
    tasks: int
    sessions: int
    connections: int


def health(http_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(http_url + "healthz", timeout=10) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


async def snapshot(proc: psutil.Process, http_url: str, label: str, cycles: int) -> Snapshot:
    info = await asyncio.to_thread(health, http_url)
    return Snapshot(
        label,
        cycles,
        round(proc.memory_info().rss / 2**20, 1),
        proc.num_fds(),
        info["tasks"],
        info["sessions"],
        info["connections"],
    )


async def settle(http_url: str, timeout_s: float = 20.0) -> None:
    """Wait until the server has no session and no connection left."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = await asyncio.to_thread(health, http_url)
        if info["sessions"] == 0 and info["connections"] == 0:
            await asyncio.sleep(0.5)  # let handler tasks finish their last step
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the server still has sessions/connections after {timeout_s} s: {info}")


SPEECH = silence(100) + tone(500) + silence(300)


async def cycle(url: str, i: int, rng: random.Random) -> str:
    """One conversation; returns its outcome ("ok", "dropped", or an error description)."""
    async with Client.connect(url, framing=rng.choice(["msgpack", "json"])) as c:
        if i % 2:
            await c.stream_audio(SPEECH)
        else:
            await c.send({"type": "text", "text": f"cycle {i} tell me something long " + "please " * 8})
        await c.recv_type("audio", timeout=30)
        if i % 4 == 3:
            c.ws.transport.abort()  # vanish mid-turn
            return "dropped"
        await c.send({"type": "interrupt"})
        await c.recv_type("interrupted", timeout=30)
        await c.send({"type": "bye"})
        try:
            await c.recv(10)
        except Exception as exc:  # the close, as expected
            if "1000" not in str(exc) and "closed" not in str(exc).lower():
                return f"bad close: {exc!r}"
    return "ok"


async def run(cycles: int, concurrency: int, warmup: int, every: int) -> dict[str, Any]:
    config = test_config(
        server={"max_sessions": concurrency * 2, "ping_interval_s": 20.0},
        limits={"max_sessions_per_ip": concurrency * 2},
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "soak.yaml"
        path.write_text(yaml.safe_dump(config))
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "serve", "--config", str(path), "--port", "0",
            cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            return await _drive(server, cycles, concurrency, warmup, every)
        finally:
            server.terminate()
            await asyncio.wait_for(server.wait(), 30)


async def _drive(
    server: asyncio.subprocess.Process, cycles: int, concurrency: int, warmup: int, every: int
) -> dict[str, Any]:
    assert server.stderr is not None
    banner = ""
    while (found := re.search(r"ws://[^ )\s]+", banner)) is None:
        banner += (await asyncio.wait_for(server.stderr.readline(), 60)).decode()
    url = found.group(0)
    http_url = url.rsplit("/", 1)[0].replace("ws://", "http://") + "/"
    proc = psutil.Process(server.pid)
    snaps = [await snapshot(proc, http_url, "start", 0)]
    outcomes: dict[str, int] = {}
    durations: list[float] = []
    rng = random.Random(7)
    started = time.monotonic()

    async def phase(indices: range) -> None:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in indices:
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                t0 = time.monotonic()
                try:
                    outcome = await cycle(url, i, rng)
                except Exception as exc:
                    outcome = f"{type(exc).__name__}: {str(exc)[:80]}"
                durations.append(time.monotonic() - t0)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if len(durations) % 200 == 0:
                    print(f"  {len(durations)} cycles, {time.monotonic() - started:.0f} s", flush=True)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    total = warmup + cycles
    await phase(range(warmup))  # RSS growth is measured from a warm process (allocator high-water reached)
    await settle(http_url)
    snaps.append(await snapshot(proc, http_url, "after warm-up", warmup))
    for start in range(warmup, total, every):
        end_at = min(total, start + every)
        await phase(range(start, end_at))
        if end_at < total:
            await settle(http_url)
            snaps.append(await snapshot(proc, http_url, "during", end_at))
    done = len(durations)
    elapsed_s = time.monotonic() - started
    await settle(http_url)
    snaps.append(await snapshot(proc, http_url, "end", done))
    durations.sort()
    first, warmed, end = snaps[0], snaps[1], snaps[-1]
    return {
        "cycles": done,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed_s, 1),
        "cycles_per_s": round(done / elapsed_s, 1),
        "cycle_ms_p50": round(1000 * durations[len(durations) // 2], 1),
        "cycle_ms_p99": round(1000 * durations[int(len(durations) * 0.99)], 1),
        "outcomes": outcomes,
        "snapshots": [asdict(s) for s in snaps],
        "rss_growth_from_warm_pct": round(100 * (end.rss_mib - warmed.rss_mib) / warmed.rss_mib, 2),
        "rss_growth_from_start_pct": round(100 * (end.rss_mib - first.rss_mib) / first.rss_mib, 2),
        "leaked_tasks": end.tasks - first.tasks,
        "leaked_fds": end.fds - first.fds,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['cycles']} cycles (warm-up included), {result['concurrency']} concurrent, "
        f"{result['elapsed_s']} s ({result['cycles_per_s']} cycles/s; "
        f"p50 {result['cycle_ms_p50']} ms, p99 {result['cycle_ms_p99']} ms)"
    )
    print(f"outcomes: {result['outcomes']}")
    print(f"{'':<16}{'cycles':>8}{'RSS MiB':>10}{'fds':>6}{'tasks':>7}{'sessions':>10}{'conns':>7}")
    for s in result["snapshots"]:
        print(
            f"{s['label']:<16}{s['after_cycles']:>8}{s['rss_mib']:>10}{s['fds']:>6}{s['tasks']:>7}"
            f"{s['sessions']:>10}{s['connections']:>7}"
        )
    ok_rss = result["rss_growth_from_warm_pct"] < 5
    ok_leaks = result["leaked_tasks"] <= 0 and result["leaked_fds"] <= 0
    print(
        f"RSS growth: {result['rss_growth_from_warm_pct']} % from warm-up ({'ok' if ok_rss else 'OVER 5 %'}), "
        f"{result['rss_growth_from_start_pct']} % from start"
    )
    print(
        f"leaked tasks: {result['leaked_tasks']}, leaked fds: {result['leaked_fds']} ({'ok' if ok_leaks else 'LEAK'})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=2000, help="measured cycles, after the warm-up")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=1000, help="cycles before the RSS baseline")
    parser.add_argument("--every", type=int, default=500, help="cycles between snapshots")
    args = parser.parse_args()
    result = asyncio.run(run(args.cycles, args.concurrency, args.warmup, max(1, args.every)))
    print_table(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "soak.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"saved {out.relative_to(ROOT)}")
    bad = set(result["outcomes"]) - {"ok", "dropped"}
    return 1 if bad or result["leaked_tasks"] > 0 or result["leaked_fds"] > 0 else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared by every benchmark process (the project's venv and pipecat's): stdlib only.

Each workload runs in a fresh process that prints one ``RESULT {json}`` line; ``run_all.py``
interleaves the systems' runs and takes medians.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

RATE_HZ = 16000
FRAME_MS = 20
FRAME_S = FRAME_MS / 1000
FRAME_BYTES = RATE_HZ * FRAME_MS // 1000 * 2  # 640 bytes of PCM16 mono
# The load generator: sessions are spread over GROUPS phases of SLOT_S; one wake-up feeds a group.
GROUPS = 10
SLOT_S = FRAME_S / GROUPS
VOICED_THRESHOLD = 8  # high byte of a PCM16 sample: about -72 dBFS


def pcm_frame(level: int = 0x20) -> bytes:
    """20 ms of PCM16 whose samples all have the high byte ``level`` (a crude square "voice")."""
    return bytes([0x00, level]) * (FRAME_BYTES // 2)


def voiced(pcm: bytes) -> bool:
    """The cheap VAD-like decision both systems run per 20 ms frame (16 sampled high bytes)."""
    return max(pcm[1::40]) >= VOICED_THRESHOLD


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def median(values: list[float]) -> float:
    return percentile(values, 50)


def pin_cpu(cpu: int | None) -> None:
    """Run this process on one core, so 'sessions per core' means one core."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


NICE = -10


def raise_priority() -> int:
    """Nice -10 where allowed (root), so a shared machine's neighbours disturb the timings less.

    Returns the niceness in effect. Both systems get the same treatment.
    """
    try:
        return os.nice(NICE - os.nice(0))
    except OSError:
        return os.nice(0)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def waited_s() -> float:
    """Time this process spent runnable but waiting for a CPU (neighbours' load), from /proc schedstat."""
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_bytes() -> int:
    """Resident set size now (from /proc, falls back to the peak from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def args() -> tuple[str, dict[str, Any]]:
    """``script.py WORKLOAD '{json params}'``."""
    workload = sys.argv[1]
    params = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    pin_cpu(params.get("cpu"))
    params["niceness"] = raise_priority()
    return workload, params


def emit(result: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(result), flush=True)


async def sleep_until(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``deadline`` (no sleep when it has passed)."""
    import asyncio

    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


def hop_result(n: int, wall_s: float, cpu_s: float) -> dict[str, Any]:
    """B1's figures for ``n`` frames through 4 hops."""
    return {
        "frames": n,
        "hops": 4,
        "us_per_hop": cpu_s / n / 4 * 1e6,  # CPU time: what the work costs, whatever the neighbours do
        "wall_us_per_hop": wall_s / n / 4 * 1e6,
    }


class RealTimeBench(Protocol):
    """What both systems' B2 drivers offer ``measure_rt``."""

    t0: float
    window: tuple[float, float]
    late_s: list[float]

    def drive(self, until: float) -> Awaitable[None]: ...

    def close(self) -> Awaitable[None]: ...


async def measure_rt(bench: RealTimeBench, k: int, p: dict[str, Any]) -> dict[str, Any]:
    """B2: run a started driver through its warm-up and measuring window; lateness and CPU share of one core."""
    import asyncio

    warm_s, measure_s = float(p.get("warm_s", 1.0)), float(p.get("measure_s", 3.0))
    lo = bench.t0 + warm_s
    hi = lo + measure_s
    bench.window = (lo, hi)
    driver = asyncio.ensure_future(bench.drive(hi + 0.1))
    await sleep_until(lo)
    c0, q0, w0 = cpu_seconds(), waited_s(), time.perf_counter()
    await sleep_until(hi)
    c1, q1, w1 = cpu_seconds(), waited_s(), time.perf_counter()
    await driver
    await bench.close()
    late_ms = [x * 1000 for x in bench.late_s]
    expected = k * measure_s / FRAME_S
    return {
        "k": k,
        "cpu_frac": (c1 - c0) / (w1 - w0),
        "waited_frac": (q1 - q0) / (w1 - w0),  # runnable but not running: the neighbours' share
        "p50_ms": percentile(late_ms, 50),
        "p99_ms": percentile(late_ms, 99),
        "max_ms": max(late_ms, default=float("nan")),
        "delivered": len(late_ms) / expected,
    }


async def measure_mem(start: Callable[[int], Awaitable[RealTimeBench]], k: int, p: dict[str, Any]) -> dict[str, Any]:
    """B3: RSS delta, then tracemalloc delta, per idle and per active session of ``k`` started by ``start``."""
    import asyncio
    import gc
    import tracemalloc

    active_s = float(p.get("active_s", 1.0))
    out: dict[str, Any] = {"k": k}
    warm = await start(2)  # imports, first allocations and caches happen outside the measurement
    await warm.drive(warm.t0 + 0.3)
    await warm.close()
    for mode in ("rss", "traced"):
        gc.collect()
        if mode == "traced":
            tracemalloc.start()
        measure: Callable[[], int] = (lambda: tracemalloc.get_traced_memory()[0]) if mode == "traced" else rss_bytes
        base = measure()
        bench = await start(k)
        await asyncio.sleep(0.5)  # every task started and parked on its queue
        gc.collect()
        idle = measure()
        bench.t0 = time.perf_counter()
        await bench.drive(bench.t0 + active_s)
        active = measure()
        await bench.close()
        if mode == "traced":
            tracemalloc.stop()
        out[f"{mode}_idle_kib"] = (idle - base) / k / 1024
        out[f"{mode}_active_kib"] = (active - base) / k / 1024
    return out


def interrupt_result(prop_ms: list[float], stale_total: int, before_counts: list[int]) -> dict[str, Any]:
    """B4's figures: interrupt -> last old-turn chunk out (ms), and old-turn chunks that left after it."""
    return {
        "interrupts": len(prop_ms),
        "p50_ms": percentile(prop_ms, 50),
        "p99_ms": percentile(prop_ms, 99),
        "max_ms": max(prop_ms),
        "stale_chunks": stale_total,
        "chunks_before_p50": percentile([float(c) for c in before_counts], 50),
        "samples_ms": prop_ms,
    }

"""The floor for B1: bare asyncio, four relay tasks over bounded queues into a counting sink task.

Usage: ``python bench/floor.py b1 '{json params}'``; prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import args, emit, hop_result  # noqa: E402


async def b1(p: dict[str, Any]) -> dict[str, Any]:
    n = int(p.get("frames", 100_000))
    queues: list[asyncio.Queue[Any]] = [asyncio.Queue(maxsize=64) for _ in range(5)]
    done = asyncio.Event()
    state = {"count": 0, "target": 0}

    async def relay(inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
        while True:
            await outbox.put(await inbox.get())

    async def sink(inbox: asyncio.Queue[Any]) -> None:
        while True:
            await inbox.get()
            state["count"] += 1
            if state["count"] == state["target"]:
                done.set()

    tasks = [asyncio.create_task(relay(queues[i], queues[i + 1])) for i in range(4)]
    tasks.append(asyncio.create_task(sink(queues[4])))
    item = ("x", 1)
    results = []
    for count in (n // 10, n):
        state["count"], state["target"] = 0, count
        done.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(count):
            await queues[0].put(item)
        await done.wait()
        results.append((time.perf_counter() - t0, time.process_time() - c0))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    wall_s, cpu_s = results[-1]
    return hop_result(n, wall_s, cpu_s)


if __name__ == "__main__":
    name, params = args()
    emit({"system": "floor", "workload": name, **asyncio.run({"b1": b1}[name](params))})

"""voxpipe's side of B1-B4, through the real Session, stage graph and Outbox (not a re-implementation).

Usage: ``python bench/vox.py b1|rt|mem|interrupt '{json params}'``; prints one ``RESULT {json}`` line.
Sessions are built as the server builds them (``Session(hello, specs, defaults, send)`` + ``run``), with
client messages fed through ``run``'s message stream (as the WebSocket reader does) or ``handle``, and a
``send`` that records what would go on the socket.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import vox_engines  # noqa: E402
from bench.common import (  # noqa: E402
    FRAME_S,
    GROUPS,
    SLOT_S,
    args,
    emit,
    hop_result,
    interrupt_result,
    measure_mem,
    measure_rt,
    pcm_frame,
    sleep_until,
)
from server.config import SessionDefaults  # noqa: E402
from server.session import Session  # noqa: E402
from stages.items import ReplyDelta  # noqa: E402
from stages.registry import StageSpec, build_pipeline  # noqa: E402
from transports import messages as m  # noqa: E402

vox_engines.register()
Send = Callable[[Any], Any]


class Running:
    """One session running its graph; ``queue`` is its client message stream (the socket reader's role)."""

    def __init__(self, specs: list[StageSpec], defaults: SessionDefaults, send: Send, subscribe: list[str]) -> None:
        async def unwrap(sequenced: Any) -> None:
            # the session numbers every message (session_seq, its replay log) as the server does; the sinks
            # below look at the message itself
            await send(sequenced.message if type(sequenced) is m.Sequenced else sequenced)

        self.session = Session(m.Hello(protocol=1, subscribe=subscribe), specs, defaults, unwrap)
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        self.task = asyncio.create_task(self.session.run(self._messages()))

    async def _messages(self) -> AsyncIterator[Any]:
        while True:
            msg = await self.queue.get()
            if msg is None:
                return
            yield msg

    async def close(self) -> None:
        await self.queue.put(None)
        await self.task


def rt_specs() -> list[StageSpec]:
    """B2/B3's graph: VAD-like (cheap) -> pass-through -> paced output."""
    return build_pipeline(
        [{"name": "vad", "engine": "bench_vad"}, {"name": "out", "engine": "passthrough", "type": "audio"}]
    )


RT_DEFAULTS = SessionDefaults(lead_ms=40.0)  # a paced 20 ms sink with two chunks of lead (a small jitter buffer)


# ---------------------------------------------------------------- B1


async def b1(p: dict[str, Any]) -> dict[str, Any]:
    n = int(p.get("frames", 100_000))
    specs = build_pipeline([{"name": f"p{i}", "engine": "passthrough", "type": "text"} for i in range(4)])
    received = 0
    target = 0
    done = asyncio.Event()

    async def send(msg: Any) -> None:
        nonlocal received
        if type(msg) is m.Reply:
            received += 1
            if received == target:
                done.set()

    run = Running(specs, SessionDefaults(), send, subscribe=["p3"])
    await asyncio.sleep(0)
    turn = run.session.new_turn(from_speech=False)
    inbox = run.session.graph.inboxes[0]
    item = ReplyDelta(turn, "x")
    results = []
    for count in (n // 10, n):  # warm-up, then the measured pass
        received, target = 0, count
        done.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(count):
            await inbox.put(item)
        await done.wait()
        results.append((time.perf_counter() - t0, time.process_time() - c0))
    await run.close()
    wall_s, cpu_s = results[-1]
    return hop_result(n, wall_s, cpu_s)


# ---------------------------------------------------------------- B2 / B3 driver


class RealTime:
    """K sessions, each sent a 20 ms audio message every 20 ms (phases spread over GROUPS slots)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.runs: list[Running] = []
        self.late_s: list[float] = []
        self.window = (float("inf"), float("inf"))
        self.t0 = 0.0
        self.dropped = 0

    def start(self) -> None:
        specs = rt_specs()
        self.t0 = time.perf_counter() + 0.3
        for i in range(self.k):
            self.runs.append(
                Running(specs, RT_DEFAULTS, self._sink(self.t0 + (i % GROUPS) * SLOT_S), subscribe=["out"])
            )

    def _sink(self, first_due: float) -> Send:
        late = self.late_s

        async def send(msg: Any) -> None:
            if type(msg) is m.AudioOut:
                now = time.perf_counter()
                lo, hi = self.window
                if lo <= now < hi:
                    late.append(now - (first_due + msg.seq * FRAME_S))

        return send

    async def drive(self, until: float) -> None:
        audio = m.Audio(data=pcm_frame())
        groups = [[r.queue for r in self.runs[g::GROUPS]] for g in range(GROUPS)]
        slot = 0
        while True:
            due = self.t0 + slot * SLOT_S
            if due >= until:
                return
            await sleep_until(due)
            for q in groups[slot % GROUPS]:
                try:
                    q.put_nowait(audio)
                except asyncio.QueueFull:
                    self.dropped += 1
            slot += 1

    async def close(self) -> None:
        for r in self.runs:
            await r.close()
        self.runs.clear()


async def rt(p: dict[str, Any]) -> dict[str, Any]:
    """B2: lateness of each output tick against its input frame's due time, and CPU share of one core."""
    k = int(p["k"])
    bench = RealTime(k)
    bench.start()
    result = await measure_rt(bench, k, p)
    return {**result, "dropped": bench.dropped}


async def mem(p: dict[str, Any]) -> dict[str, Any]:
    """B3: RSS delta per idle / active session, then the same with tracemalloc."""

    async def start(n: int) -> RealTime:
        bench = RealTime(n)
        bench.start()
        return bench

    return await measure_mem(start, int(p.get("k", 200)), p)


# ---------------------------------------------------------------- B4


async def interrupt(p: dict[str, Any]) -> dict[str, Any]:
    """B4: a turn streams 4x faster than real time into the paced outbox; interrupt at a random time."""
    n = int(p.get("interrupts", 1000))
    rng = random.Random(p.get("seed", 1))
    lo_ms, hi_ms = p.get("delay_ms", [10, 60])
    settle_s = float(p.get("settle_ms", 25)) / 1000
    specs = build_pipeline([{"name": "tts", "engine": "bench_stream", "speed": 4.0, "pieces": 200}])
    audio_log: list[tuple[float, int]] = []
    acks: dict[int, float] = {}
    acked = asyncio.Event()

    async def send(msg: Any) -> None:
        kind = type(msg)
        if kind is m.AudioOut:
            audio_log.append((time.perf_counter(), msg.turn))
        elif kind is m.Interrupted:
            acks[msg.turn] = time.perf_counter()
            acked.set()

    run = Running(specs, RT_DEFAULTS, send, subscribe=["tts"])
    session = run.session
    await asyncio.sleep(0.05)
    prop_ms: list[float] = []
    stale_total = 0
    before_counts: list[int] = []
    for _ in range(n):
        audio_log.clear()
        acked.clear()
        await session.inputs.handle(m.Say(text="go."))
        turn = session.turns.last
        await asyncio.sleep(rng.uniform(lo_ms, hi_ms) / 1000)
        t_i = time.perf_counter()
        await session.inputs.handle(m.Interrupt())
        await asyncio.wait_for(acked.wait(), 2.0)
        await asyncio.sleep(settle_s)
        stale = [t for t, tr in audio_log if tr == turn and t > t_i]
        before_counts.append(sum(1 for t, tr in audio_log if tr == turn and t <= t_i))
        stale_total += len(stale)
        prop_ms.append((max([acks[turn], *stale]) - t_i) * 1000)
    await run.close()
    return interrupt_result(prop_ms, stale_total, before_counts)


WORKLOADS = {"b1": b1, "rt": rt, "mem": mem, "interrupt": interrupt}

if __name__ == "__main__":
    name, params = args()
    emit({"system": "voxpipe", "workload": name, **asyncio.run(WORKLOADS[name](params))})

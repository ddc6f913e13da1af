"""pipecat's side of B1-B4 (runs in bench/.venv-pipecat): the same workload shapes as ``vox.py``.

Usage: ``python bench/pc.py b1|rt|mem|interrupt '{json params, "mode": "lean"|"default"}'``.
"lean": PipelineWorker with RTVI, turn tracking, idle detection and metrics off; "default": the
worker's defaults. Each session is a ``PipelineWorker`` run by its own ``WorkerRunner``, as a pipecat
bot runs per connection. Paced output is a ``BaseOutputTransport`` whose ``write_audio_frame`` records
the write and then sleeps on a 20 ms playout clock, as pipecat's WebSocket transports do.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402

logger.remove()
logger.add(sys.stderr, level="WARNING")  # log I/O is not what is measured (same for both modes)

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    StartFrame,
    TextFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.transports.base_output import BaseOutputTransport  # noqa: E402
from pipecat.transports.base_transport import TransportParams  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from bench.common import (  # noqa: E402
    FRAME_BYTES,
    FRAME_S,
    GROUPS,
    RATE_HZ,
    SLOT_S,
    args,
    emit,
    hop_result,
    interrupt_result,
    measure_mem,
    measure_rt,
    pcm_frame,
    sleep_until,
    voiced,
)


class Pass(FrameProcessor):
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        await self.push_frame(frame, direction)


class Counter(FrameProcessor):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.target = 0
        self.done = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TextFrame):
            self.count += 1
            if self.count == self.target:
                self.done.set()
        await self.push_frame(frame, direction)


class VadLike(FrameProcessor):
    """The same cheap decision as voxpipe's bench stage; the frame (or silence) comes back as bot audio."""

    _SILENCE = bytes(FRAME_BYTES)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            pcm = frame.audio if voiced(frame.audio) else self._SILENCE
            await self.push_frame(OutputAudioRawFrame(pcm, sample_rate=RATE_HZ, num_channels=1))
        else:
            await self.push_frame(frame, direction)


class Producer(FrameProcessor):
    """TTS-like: on a TextFrame, streams 20 ms chunks 4x faster than real time (cancelled by interruption)."""

    def __init__(self, pieces: int = 200, speed: float = 4.0) -> None:
        super().__init__()
        self.pieces = pieces
        self.interval_s = FRAME_S / speed

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TextFrame):
            piece = b"\x00\x10" * (FRAME_BYTES // 2)
            for _ in range(self.pieces):
                await self.push_frame(OutputAudioRawFrame(piece, sample_rate=RATE_HZ, num_channels=1))
                await asyncio.sleep(self.interval_s)
        else:
            await self.push_frame(frame, direction)


class PacedOutput(BaseOutputTransport):
    """Paced 20 ms sink: ``on_write(now)`` per chunk, then sleep to the next tick of the playout clock."""

    def __init__(self, on_write: Any, on_interrupted: Any = None) -> None:
        super().__init__(
            TransportParams(
                audio_out_enabled=True,
                audio_out_sample_rate=RATE_HZ,
                audio_out_10ms_chunks=FRAME_BYTES * 100 // (RATE_HZ * 2),
                audio_out_auto_silence=False,  # silence on underrun would shift the tick count
            )
        )
        self.on_write = on_write
        self.on_interrupted = on_interrupted
        self._next_send_time = 0.0

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            self._next_send_time = 0.0
            if self.on_interrupted is not None:
                self.on_interrupted(time.perf_counter())

    async def write_audio_frame(self, frame: OutputAudioRawFrame) -> bool:
        self.on_write(time.perf_counter())
        now = time.monotonic()
        sleep_s = max(0.0, self._next_send_time - now)
        await asyncio.sleep(sleep_s)
        self._next_send_time = (time.monotonic() if sleep_s == 0 else self._next_send_time) + FRAME_S
        return True


class Bot:
    """One session: a PipelineWorker run by its own WorkerRunner."""

    def __init__(self, processors: list[FrameProcessor], mode: str) -> None:
        if mode == "lean":
            kw: dict[str, Any] = {
                "enable_rtvi": False,
                "enable_turn_tracking": False,
                "idle_timeout_secs": None,
                "params": PipelineParams(enable_metrics=False, enable_usage_metrics=False),
            }
        else:
            kw = {}
        self.worker = PipelineWorker(Pipeline(processors), check_dangling_tasks=False, **kw)
        self.started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def _started(_worker: Any, _frame: Any) -> None:
            self.started.set()

        self.runner = WorkerRunner(handle_sigint=False, check_dangling_tasks=False)
        self.task: asyncio.Task[Any] | None = None

    async def start(self) -> None:
        await self.runner.add_workers(self.worker)
        self.task = asyncio.create_task(self.runner.run())
        await asyncio.wait_for(self.started.wait(), 30)

    async def close(self) -> None:
        await self.worker.queue_frame(EndFrame())
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)


# ---------------------------------------------------------------- B1


async def b1(p: dict[str, Any]) -> dict[str, Any]:
    n = int(p.get("frames", 100_000))
    stages = [Pass() for _ in range(4)]
    counter = Counter()
    bot = Bot([*stages, counter], p["mode"])
    await bot.start()
    first = stages[0]
    results = []
    for count in (n // 10, n):
        counter.count, counter.target = 0, count
        counter.done.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(count):
            await first.queue_frame(TextFrame("x"))
        await counter.done.wait()
        results.append((time.perf_counter() - t0, time.process_time() - c0))
    await bot.close()
    wall_s, cpu_s = results[-1]
    return hop_result(n, wall_s, cpu_s)


# ---------------------------------------------------------------- B2 / B3


class RealTime:
    def __init__(self, k: int, mode: str) -> None:
        self.k = k
        self.mode = mode
        self.bots: list[Bot] = []
        self.late_s: list[float] = []
        self.window = (float("inf"), float("inf"))
        self.t0 = 0.0

    async def start(self) -> None:
        for i in range(self.k):
            out = PacedOutput(self._sink(i))
            bot = Bot([VadLike(), Pass(), out], self.mode)
            await bot.start()
            self.bots.append(bot)
        self.t0 = time.perf_counter() + 0.3

    def _sink(self, i: int) -> Any:
        late = self.late_s
        seq = 0

        def on_write(now: float) -> None:
            nonlocal seq
            lo, hi = self.window
            if lo <= now < hi:
                late.append(now - (self.t0 + (i % GROUPS) * SLOT_S + seq * FRAME_S))
            seq += 1

        return on_write

    async def drive(self, until: float) -> None:
        pcm = pcm_frame()
        groups = [[b.worker for b in self.bots[g::GROUPS]] for g in range(GROUPS)]
        slot = 0
        while True:
            due = self.t0 + slot * SLOT_S
            if due >= until:
                return
            await sleep_until(due)
            for worker in groups[slot % GROUPS]:
                await worker.queue_frame(InputAudioRawFrame(pcm, sample_rate=RATE_HZ, num_channels=1))
            slot += 1

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.bots))
        self.bots.clear()


async def rt(p: dict[str, Any]) -> dict[str, Any]:
    k = int(p["k"])
    bench = RealTime(k, p["mode"])
    await bench.start()
    return {**(await measure_rt(bench, k, p)), "dropped": 0}


async def mem(p: dict[str, Any]) -> dict[str, Any]:
    async def start(n: int) -> RealTime:
        bench = RealTime(n, p["mode"])
        await bench.start()
        return bench

    return await measure_mem(start, int(p.get("k", 200)), p)


# ---------------------------------------------------------------- B4


async def interrupt(p: dict[str, Any]) -> dict[str, Any]:
    n = int(p.get("interrupts", 1000))
    rng = random.Random(p.get("seed", 1))
    lo_ms, hi_ms = p.get("delay_ms", [10, 60])
    settle_s = float(p.get("settle_ms", 25)) / 1000
    writes: list[float] = []
    acks: list[float] = []
    acked = asyncio.Event()

    def on_interrupted(now: float) -> None:
        acks.append(now)
        acked.set()

    head = Pass()  # where the user-input side would sit: it broadcasts the interruption
    out = PacedOutput(writes.append, on_interrupted)
    bot = Bot([head, Producer(), Pass(), out], p["mode"])
    await bot.start()
    await asyncio.sleep(0.05)
    prop_ms: list[float] = []
    stale_total = 0
    before_counts: list[int] = []
    for _ in range(n):
        writes.clear()
        acks.clear()
        acked.clear()
        await bot.worker.queue_frame(TextFrame("go."))
        await asyncio.sleep(rng.uniform(lo_ms, hi_ms) / 1000)
        t_i = time.perf_counter()
        await head.broadcast_interruption()
        await asyncio.wait_for(acked.wait(), 2.0)
        await asyncio.sleep(settle_s)
        stale = [t for t in writes if t > t_i]
        before_counts.append(sum(1 for t in writes if t <= t_i))
        stale_total += len(stale)
        prop_ms.append((max([acks[0], *stale]) - t_i) * 1000)
    await bot.close()
    return interrupt_result(prop_ms, stale_total, before_counts)


WORKLOADS = {"b1": b1, "rt": rt, "mem": mem, "interrupt": interrupt}

if __name__ == "__main__":
    name, params = args()
    params.setdefault("mode", "lean")
    result = asyncio.run(WORKLOADS[name](params))
    emit({"system": f"pipecat-{params['mode']}", "workload": name, **result})

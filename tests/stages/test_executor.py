"""``stages/executor.py``: bounded lines, cancellation, and worker-to-loop streaming with backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from stages.executor import SHEDDABLE, URGENT, BoundedExecutor, stream_from_worker
from tests.waiting import stays_false, wait_until
from vocab.errors import StageError


@pytest.fixture
def executor() -> Any:
    pool = BoundedExecutor("test", max_workers=1, max_waiting=2)
    yield pool
    pool.shutdown()


async def test_run_returns_the_result_off_the_event_loop(executor: BoundedExecutor) -> None:
    loop_thread = threading.get_ident()
    assert await executor.run(lambda a, b: (a + b, threading.get_ident()), 2, 3) != (5, loop_thread)
    assert (await executor.run(lambda: 7)) == 7
    assert executor.in_use == 0


async def test_a_full_line_fails_at_once_with_busy(executor: BoundedExecutor) -> None:
    gate = threading.Event()
    calls = [asyncio.ensure_future(executor.run(gate.wait, 5)) for _ in range(3)]  # 1 running + 2 waiting
    await wait_until(lambda: executor.in_use == 3)
    with pytest.raises(StageError) as caught:
        await executor.run(lambda: None)
    assert caught.value.code == "busy"
    gate.set()
    assert await asyncio.gather(*calls) == [True, True, True]
    assert executor.in_use == 0


async def test_urgent_calls_are_served_before_sheddable_ones_waiting_longer(executor: BoundedExecutor) -> None:
    gate = threading.Event()
    ran: list[str] = []
    running = asyncio.ensure_future(executor.run(gate.wait, 5))
    await wait_until(lambda: executor.in_use == 1)
    partial = asyncio.ensure_future(executor.run(ran.append, "partial", priority=SHEDDABLE))
    await wait_until(lambda: executor.in_use == 2)
    final = asyncio.ensure_future(executor.run(ran.append, "final", priority=URGENT))
    await wait_until(lambda: executor.in_use == 3)
    gate.set()
    await asyncio.gather(running, partial, final)
    assert ran == ["final", "partial"]
    assert executor.in_use == 0


async def test_a_full_line_sheds_the_oldest_partial_for_a_final(executor: BoundedExecutor) -> None:
    gate = threading.Event()
    ran: list[str] = []
    running = asyncio.ensure_future(executor.run(gate.wait, 5))
    await wait_until(lambda: executor.in_use == 1)
    old = asyncio.ensure_future(executor.run(ran.append, "old partial", priority=SHEDDABLE))
    await wait_until(lambda: executor.in_use == 2)
    new = asyncio.ensure_future(executor.run(ran.append, "new partial", priority=SHEDDABLE))
    await wait_until(lambda: executor.in_use == 3)  # the line is full
    final = asyncio.ensure_future(executor.run(ran.append, "final"))
    with pytest.raises(StageError) as caught:
        await old
    assert caught.value.code == "busy"
    assert executor.shed == 1
    with pytest.raises(StageError):  # line full of a final and a partial: a second final sheds the partial
        await asyncio.gather(executor.run(ran.append, "second final"), new)
    with pytest.raises(StageError) as refused:  # nothing left to shed: only finals in line
        await executor.run(ran.append, "third final")
    assert refused.value.code == "busy"
    gate.set()
    await asyncio.gather(running, final)
    await wait_until(lambda: ran == ["final", "second final"])
    assert executor.in_use == 0


async def test_a_newer_partial_sheds_an_older_one_never_a_final(executor: BoundedExecutor) -> None:
    gate = threading.Event()
    ran: list[str] = []
    running = asyncio.ensure_future(executor.run(gate.wait, 5))
    await wait_until(lambda: executor.in_use == 1)
    final = asyncio.ensure_future(executor.run(ran.append, "final"))
    old = asyncio.ensure_future(executor.run(ran.append, "old partial", priority=SHEDDABLE))
    await wait_until(lambda: executor.in_use == 3)
    new = asyncio.ensure_future(executor.run(ran.append, "new partial", priority=SHEDDABLE))
    with pytest.raises(StageError):
        await old
    gate.set()
    await asyncio.gather(running, final, new)
    assert ran == ["final", "new partial"]


async def test_cancelling_a_waiting_call_removes_it_from_the_line(executor: BoundedExecutor) -> None:
    gate = threading.Event()
    ran: list[str] = []
    running = asyncio.ensure_future(executor.run(gate.wait, 5))
    waiting = asyncio.ensure_future(executor.run(ran.append, "waiting"))
    await wait_until(lambda: executor.in_use == 2)
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    assert executor.in_use == 1  # the slot came back at once
    gate.set()
    await running
    await executor.run(lambda: None)
    assert ran == []


async def test_cancelling_a_running_call_frees_the_caller_not_the_worker(executor: BoundedExecutor) -> None:
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        release.wait(5)
        return "done"

    task = asyncio.ensure_future(executor.run(slow))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()  # the caller is free while the call still runs
    assert executor.in_use == 1  # still running in its thread
    release.set()
    await executor.run(lambda: None)
    assert executor.in_use == 0


def counter(limit: int, produced: list[int], step_s: float = 0.0) -> Callable[[threading.Event, Any], None]:
    def produce(stop: threading.Event, put: Any) -> None:
        for i in range(limit):
            if stop.is_set() or not put(i):
                return
            produced.append(i)
            if step_s:
                time.sleep(step_s)

    return produce


async def test_stream_yields_items_in_order(executor: BoundedExecutor) -> None:
    produced: list[int] = []
    got = [x async for x in stream_from_worker(executor, counter(50, produced))]
    assert got == list(range(50))


async def test_stream_buffer_is_bounded_and_blocks_the_worker(executor: BoundedExecutor) -> None:
    produced: list[int] = []
    stream = stream_from_worker(executor, counter(1000, produced), max_buffered=8)
    assert await anext(stream) == 0
    await asyncio.to_thread(lambda: None)  # the worker thread gets a chance to run
    await wait_until(lambda: len(produced) == 9)  # the one taken, and 8 buffered
    await stays_false(lambda: len(produced) > 9, 0.1)  # a slow consumer: the worker waits, not runs ahead
    await stream.aclose()
    await executor.run(lambda: None)  # the single worker is free again
    assert len(produced) <= 10


async def test_closing_the_stream_stops_the_worker_within_a_step(executor: BoundedExecutor) -> None:
    produced: list[int] = []
    stream = stream_from_worker(executor, counter(10_000, produced, step_s=0.01))
    for _ in range(3):
        await anext(stream)
    await stream.aclose()
    await executor.run(lambda: None)  # runs only once the producer has returned
    assert len(produced) < 10  # it stopped at its next step, not after 10,000


async def test_a_stream_closed_while_in_line_never_starts(executor: BoundedExecutor) -> None:
    gate = threading.Event()
    blocker = asyncio.ensure_future(executor.run(gate.wait, 5))
    produced: list[int] = []
    task = asyncio.ensure_future(anext(stream_from_worker(executor, counter(5, produced))))
    await wait_until(lambda: executor.in_use == 2)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    gate.set()
    await blocker
    await executor.run(lambda: None)
    assert produced == []


async def test_a_worker_exception_is_raised_to_the_consumer(executor: BoundedExecutor) -> None:
    def produce(stop: threading.Event, put: Any) -> None:
        put("first")
        raise StageError("model exploded", code="llm_failed")

    got: list[Any] = []
    with pytest.raises(StageError, match="model exploded"):
        async for item in stream_from_worker(executor, produce):
            got.append(item)
    assert got == ["first"]

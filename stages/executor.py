"""Bounded executors for CPU-heavy engine calls, so the event loop never runs model code.

``BoundedExecutor``: a thread pool per loaded model (one worker by default: llama.cpp contexts,
CTranslate2 and ONNX sessions are used one call at a time) with a bounded line of waiting calls.
``stream_from_worker``: a producer running in such a pool hands items to an async iterator through a
bounded buffer, and stops at its next step when the iterator is closed (barge-in).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

from vocab.errors import StageError

T = TypeVar("T")


class BoundedExecutor:
    """Thread pool with at most ``max_workers`` running and ``max_waiting`` queued calls.

    Overflow policy: a call beyond ``max_workers + max_waiting`` fails at once with
    ``StageError(code="busy")``; the turn ends with that error, the session goes on.

    Cancellation: cancelling the task awaiting ``run`` while the call still waits in line removes
    it from the line (it never runs). A call already running in a thread cannot be stopped (Python
    cannot interrupt a thread): the awaiting task is freed at once, the call finishes in the
    background, still holding its worker, and its result is dropped. Long calls should therefore be
    streamed with ``stream_from_worker``, whose producer checks a stop flag between steps.
    """

    def __init__(self, name: str, *, max_workers: int = 1, max_waiting: int = 32) -> None:
        if max_workers < 1 or max_waiting < 0:
            raise ValueError("max_workers must be >= 1 and max_waiting >= 0")
        self.name = name
        self.max_workers = max_workers
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._slots = max_workers + max_waiting
        self._in_use = 0
        self._lock = threading.Lock()  # slots are released from worker threads too

    @property
    def in_use(self) -> int:
        """Calls running or waiting right now."""
        return self._in_use

    def _take(self) -> None:
        with self._lock:
            if self._in_use >= self._slots:
                raise StageError(f"{self.name} is busy: {self._in_use} calls running or in line", code="busy")
            self._in_use += 1

    def _release(self, _future: object = None) -> None:
        with self._lock:
            self._in_use -= 1

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Start ``fn(*args)`` in the pool; raises ``StageError('busy')`` when the line is full."""
        self._take()
        try:
            future = self._pool.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return future

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the pool, awaited; see the class docstring for cancellation."""
        return await asyncio.wrap_future(self.submit(fn, *args))

    def shutdown(self) -> None:
        """Drop the calls in line and let running ones finish in the background."""
        self._pool.shutdown(wait=False, cancel_futures=True)


_DONE = object()

# produce(stop, put): ``put(item)`` blocks while the buffer is full and returns False once the
# consumer has gone (stop is set); the producer should return then, and check ``stop`` between steps.
Put = Callable[[Any], bool]
Producer = Callable[[threading.Event, Put], None]


async def stream_from_worker(
    executor: BoundedExecutor, produce: Producer, *, max_buffered: int = 64
) -> AsyncGenerator[Any, None]:
    """Run ``produce(stop, put)`` in ``executor`` and yield what it puts, as it puts it.

    At most ``max_buffered`` items wait between the worker and the consumer; when the consumer is
    slower, ``put`` blocks the worker (backpressure, nothing is dropped). An exception raised by the
    producer is raised here. Closing the iterator (``aclose``, task cancellation) sets ``stop``: a
    producer still waiting in line never starts, a running one sees ``stop`` (or ``put`` returning
    False) at its next step, so the worker ends within one step and frees the model.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()  # bounded by ``room``: data items + at most 2 control items
    room = threading.Semaphore(max_buffered)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not room.acquire(timeout=0.05):
            if stop.is_set():
                return False
        if stop.is_set():
            return False
        loop.call_soon_threadsafe(queue.put_nowait, item)
        return True

    def control(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            if not stop.is_set():
                produce(stop, put)
        except BaseException as exc:  # handed to the consumer, which raises it
            control(exc)
        finally:
            control(_DONE)

    future = executor.submit(work)
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            room.release()
            yield item
    finally:
        stop.set()
        future.cancel()  # still in line: it never runs (and its slot is released)

"""Bounded executors for CPU-heavy engine calls: the event loop never runs model code.

One worker thread per loaded model by default (llama.cpp, CTranslate2 and ONNX sessions are used one
call at a time), and a bounded line of waiting calls: past ``max_waiting`` a call fails at once with
``StageError('busy')`` instead of queueing without end. Cancelling the awaiting task does not stop a
call already running in a thread (Python cannot); it frees the caller, and the call's result is dropped.
Streaming engines check a stop flag between steps for that reason.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from server.errors import StageError

T = TypeVar("T")


class BoundedExecutor:
    def __init__(self, name: str, *, max_workers: int = 1, max_waiting: int = 32) -> None:
        self.name = name
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self._slots = max_workers + max_waiting
        self._in_use = 0
        self._lock = threading.Lock()  # calls are released from worker threads too

    def _take(self) -> None:
        with self._lock:
            if self._in_use >= self._slots:
                raise StageError(f"{self.name} is busy: {self._in_use} calls in line", code="busy")
            self._in_use += 1

    def _release(self, _future: object = None) -> None:
        with self._lock:
            self._in_use -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        self._take()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Start a call whose progress the caller follows by other means (streaming); it counts in the line."""
        self._take()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(self._release)
        return future

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


_DONE = object()
Producer = Callable[[threading.Event, Callable[[Any], None]], None]


async def stream_from_worker(executor: BoundedExecutor, produce: Producer) -> AsyncIterator[Any]:
    """Run ``produce(stop, put)`` in ``executor`` and yield what it puts, as it puts it.

    An exception in the worker is raised here. Closing the iterator (barge-in) sets ``stop``, which the
    producer checks between steps, so the worker ends within one step and frees the model.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()  # bounded by the producer's own step count (tokens, sentences)
    stop = threading.Event()

    def put(item: Any) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            produce(stop, put)
        except Exception as exc:
            put(exc)
        finally:
            put(_DONE)

    executor.submit(work)
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()

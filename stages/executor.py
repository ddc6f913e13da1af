"""Bounded executors for CPU-heavy engine calls, so the event loop never runs model code.

``BoundedExecutor``: a thread pool per loaded model (one worker by default: llama.cpp contexts,
CTranslate2 and ONNX sessions are used one call at a time) with a bounded line of waiting calls,
served by priority: urgent calls (finals) first, sheddable ones (partials) shed first when it is full.
``stream_from_worker``: a producer running in such a pool hands items to an async iterator through a
bounded buffer, and stops at its next step when the iterator is closed (barge-in).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import heapq
import itertools
import threading
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

from vocab.errors import StageError

T = TypeVar("T")


URGENT = 0  # a call someone waits on to go on (a final transcript, a reply): never shed
SHEDDABLE = 1  # a call whose result is nice to have (a partial transcript): shed first under load


class BoundedExecutor:
    """Thread pool with at most ``max_workers`` running and ``max_waiting`` queued calls, by priority.

    One per loaded model, shared by every session: the line is served by ``priority`` (``URGENT``
    before ``SHEDDABLE``; in order within one priority), so one session's final transcript does not
    wait behind other sessions' partials.

    Overflow policy: a call beyond ``max_workers + max_waiting`` sheds the oldest waiting ``SHEDDABLE``
    call (it fails with ``StageError(code="busy")``) when it is ``URGENT``, or when both are ``SHEDDABLE``
    (the newer partial covers more audio); otherwise it fails at once with ``StageError(code="busy")``;
    the turn ends with that error, the session goes on.

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
        # the line: (priority, order, future, fn, args); each entry has one pool job that pops the best one
        self._line: list[tuple[int, int, concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]] = []
        self._order = itertools.count()
        self.shed = 0  # calls shed from the line so far

    @property
    def in_use(self) -> int:
        """Calls running or waiting right now."""
        return self._in_use

    def _release(self, _future: object = None) -> None:
        with self._lock:
            self._in_use -= 1

    def _victim(self, priority: int) -> int | None:
        """Index in the line of the call to shed for a new one of ``priority`` (lock held), or None."""
        best: int | None = None
        for i, (waiting, order, future, _fn, _args) in enumerate(self._line):
            sheds = waiting > priority or priority >= SHEDDABLE  # more urgent, or the newer of two partials
            if waiting < SHEDDABLE or future.done() or not sheds:
                continue
            if best is None or (waiting, -order) > (self._line[best][0], -self._line[best][1]):
                best = i
        return best

    def submit(self, fn: Callable[..., T], *args: Any, priority: int = URGENT) -> concurrent.futures.Future[T]:
        """Put ``fn(*args)`` in line; raises ``StageError('busy')`` when the line is full (see the class)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        shed: concurrent.futures.Future[Any] | None = None
        with self._lock:
            if self._in_use >= self._slots:
                victim = self._victim(priority)
                if victim is None:
                    raise StageError(f"{self.name} is busy: {self._in_use} calls running or in line", code="busy")
                shed = self._line.pop(victim)[2]
                heapq.heapify(self._line)
                self.shed += 1
            self._in_use += 1
            heapq.heappush(self._line, (priority, next(self._order), future, fn, args))
        future.add_done_callback(self._release)
        if shed is not None:  # outside the lock: its done callback releases its slot
            shed.set_exception(StageError(f"{self.name} is busy: shed for a more urgent call", code="busy"))
        try:
            self._pool.submit(self._run_next)
        except BaseException:
            future.cancel()
            raise
        return future

    def _run_next(self) -> None:
        """A pool job: run the most urgent call in line (a cancelled or shed one is skipped)."""
        with self._lock:
            if not self._line:
                return  # its call was shed: another job took the line's calls
            _priority, _order, future, fn, args = heapq.heappop(self._line)
        if future.done() or not future.set_running_or_notify_cancel():
            return
        try:
            result = fn(*args)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    async def run(self, fn: Callable[..., T], *args: Any, priority: int = URGENT) -> T:
        """``fn(*args)`` in the pool, awaited; see the class docstring for priority and cancellation."""
        return await asyncio.wrap_future(self.submit(fn, *args, priority=priority))

    def shutdown(self) -> None:
        """Drop the calls in line and let running ones finish in the background."""
        with self._lock:
            line, self._line = self._line, []
        for entry in line:
            entry[2].cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)


_DONE = object()

# produce(stop, put): ``put(item)`` blocks while the buffer is full and returns False once the
# consumer has gone (stop is set); the producer should return then, and check ``stop`` between steps.
Put = Callable[[Any], bool]
Producer = Callable[[threading.Event, Put], None]


async def stream_from_worker(
    executor: BoundedExecutor, produce: Producer, *, max_buffered: int = 64, priority: int = URGENT
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

    future = executor.submit(work, priority=priority)
    try:
        while (item := await queue.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            room.release()
            yield item
    finally:
        stop.set()
        future.cancel()  # still in line: it never runs (and its slot is released)

"""Waiting on conditions instead of sleeping: the one way tests synchronise with tasks, threads and servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, step_s: float = 0.005) -> float:
    """Poll ``predicate`` (state with no event to wait on) until true; returns the seconds it took, or raises."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(step_s)
    return time.monotonic() - started


async def stays_false(predicate: Callable[[], bool], for_s: float) -> None:
    """Assert that something that would happen at once if it were wrong does not happen within ``for_s``."""
    try:
        await wait_until(predicate, for_s)
    except TimeoutError:
        return
    raise AssertionError("the condition became true")

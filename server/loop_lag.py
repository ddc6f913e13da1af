"""Event-loop lag: how late the loop wakes a timer, into ``voxpipe_event_loop_lag_seconds``.

A late timer means something held the loop (a CPU-bound call that should be in an executor, a burst of
sessions): every session's audio pacing suffers from it. Four wake-ups a second cost nothing measurable.
"""

from __future__ import annotations

import asyncio

from vocab.metrics import EVENT_LOOP_LAG

INTERVAL_S = 0.25


async def watch_loop_lag(interval_s: float = INTERVAL_S) -> None:
    """Runs until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        EVENT_LOOP_LAG.observe(max(0.0, loop.time() - due))

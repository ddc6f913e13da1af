"""Fake model services on loopback for the upstream backends' tests (see ``services``), and helpers."""

from __future__ import annotations

import asyncio
from typing import Any

from stages.base import StageContext


def stage_context(**overrides: Any) -> StageContext:
    """A StageContext for calling a backend directly (no session): spawn runs a plain task."""
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    fields: dict[str, Any] = {
        "session_id": "s1",
        "in_rate_hz": 16000,
        "out_rate_hz": 16000,
        "system_prompt": "Be brief.",
        "voice": None,
        "language": "en",
        "history": [],
        "new_turn": lambda: 1,
        "is_live": lambda turn: True,
        "spawn": spawn,
    }
    fields.update(overrides)
    return StageContext(**fields)

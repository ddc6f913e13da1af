"""A ``StageContext`` without a session, for calling a stage or a backend directly."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from server.history import History
from stages.base import StageContext


def stage_context(**overrides: Any) -> StageContext:
    """Test defaults (16 kHz both ways, a fresh history); ``spawn`` runs a plain task kept until it ends."""
    tasks: set[asyncio.Task[Any]] = set()
    turns = itertools.count(1)

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
        "conversation": History(40),
        "new_turn": lambda: next(turns),
        "is_live": lambda turn: True,
        "spawn": spawn,
    }
    fields.update(overrides)
    return StageContext(**fields)

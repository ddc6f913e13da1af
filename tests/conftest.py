"""Shared fixtures; ``tests/client.py`` has the server and client helpers."""

from __future__ import annotations

import asyncio
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DUMP_BEFORE_TIMEOUT_S = 3.0


def _dump_asyncio_tasks(test_id: str) -> None:
    """Where every asyncio task is waiting (pytest-timeout shows threads only, not tasks)."""
    tasks = list(asyncio.tasks._all_tasks)  # type: ignore[attr-defined]  # every loop's tasks; a diagnostic
    lines = [f"\n=== {test_id}: about to time out; {len(tasks)} asyncio tasks ==="]
    for task in tasks:
        if task.done():
            continue
        lines.append(f"--- {task.get_name()} {task.get_coro()!r}")
        for frame in task.get_stack(limit=12):
            lines.extend(traceback.format_stack(frame, limit=1))
    print("\n".join(lines), file=sys.stderr, flush=True)


@pytest.fixture(autouse=True)
def _dump_tasks_before_timeout(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that hangs leaves the stacks of its asyncio tasks in its report, to find what it waited on."""
    marker = request.node.get_closest_marker("timeout")
    timeout_s = float(marker.args[0]) if marker and marker.args else float(request.config.getini("timeout") or 0)
    if timeout_s <= DUMP_BEFORE_TIMEOUT_S:
        yield
        return
    timer = threading.Timer(timeout_s - DUMP_BEFORE_TIMEOUT_S, _dump_asyncio_tasks, args=(request.node.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()

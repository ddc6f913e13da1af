"""Fake model services on loopback for the upstream backends' tests (see ``services``), and helpers to call
a backend directly: an OpenAI-compatible chat backend over fakes.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from stages.engines.openai_llm import OpenAiLlm
from tests.fakes.openai import FakeOpenAi
from tests.stage_context import stage_context
from vocab.options import build

# Small limits so faults resolve in milliseconds; the breaker stays out of the way unless a test sets it.
FAST = {"retries": 2, "backoff_ms": 1, "connect_timeout_s": 1.0, "read_timeout_s": 1.0, "breaker_cooldown_s": 60.0}


@contextlib.asynccontextmanager
async def llm(*urls: str, **options: Any) -> AsyncIterator[OpenAiLlm]:
    """An OpenAI-compatible chat backend over ``urls`` (closed on exit)."""
    entry = {"model": "m", "endpoints": [{"url": u} for u in urls], **FAST, **options}
    backend = OpenAiLlm(build(OpenAiLlm.Options, entry, "pipeline[2]"))
    try:
        yield backend
    finally:
        await backend.aclose()


def ask(backend: OpenAiLlm, text: str = "hello there") -> AsyncIterator[str]:
    return backend.stream([{"role": "user", "content": text}], ctx=stage_context())


async def reply(backend: OpenAiLlm, text: str = "hello there") -> str:
    return "".join([d async for d in ask(backend, text)])


@contextlib.asynccontextmanager
async def openai_fakes(n: int) -> AsyncIterator[list[FakeOpenAi]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(FakeOpenAi()) for _ in range(n)]


def served(fake: FakeOpenAi) -> int:
    return len(fake.requests)

"""Ollama's native chat API as an LLM backend: ``POST /api/chat``, an NDJSON stream.

Each line is ``{"message": {"role": "assistant", "content": "..."}, "done": false}``; the last has
``"done": true`` (with ``done_reason`` and timings). An ``{"error": "..."}`` line reports a failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from stages.base import StageContext
from stages.engines.http_common import HttpBackend, bad, ndjson_objects
from stages.upstream import HttpCall, HttpOptions
from vocab.errors import UpstreamError
from vocab.options import require


async def ollama_deltas(response: httpx.Response) -> AsyncIterator[str]:
    done = False
    async for obj in ndjson_objects(response):
        if done:
            continue
        if "error" in obj:
            raise bad(f"ollama reported an error: {obj['error']}")
        message = obj.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if content is not None and not isinstance(content, str):
            raise bad(f"message.content is not a string: {content!r}"[:160])
        if content:
            yield content  # ``thinking`` (reasoning models) is not spoken
        if obj.get("done") is True:
            done = True
    if not done:
        raise UpstreamError("the stream ended before a line with done: true", code="upstream_unavailable")


class OllamaLlm(HttpBackend):
    kind: ClassVar[str] = "llm"
    backend_name = "ollama"

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Options(HttpOptions):
        model: str
        path: str = "/api/chat"
        options: dict[str, Any] = field(default_factory=dict)  # Ollama's model options (num_predict, temperature)
        keep_alive: str | None = None  # how long Ollama keeps the model loaded ("5m", "-1")
        think: bool | None = None  # reasoning models: false turns thinking off

        def validate(self) -> None:
            HttpOptions.validate(self)
            require(bool(self.model), "model", "must not be empty")
            require(self.path.startswith("/"), "path", "must start with '/'")

    def __init__(self, options: OllamaLlm.Options) -> None:
        super().__init__(options)
        self.options = options

    def request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.options.model, "messages": messages, "stream": True}
        if self.options.options:
            body["options"] = dict(self.options.options)
        if self.options.keep_alive is not None:
            body["keep_alive"] = self.options.keep_alive
        if self.options.think is not None:
            body["think"] = self.options.think
        return body

    async def stream(self, messages: list[dict[str, str]], *, ctx: StageContext) -> AsyncIterator[str]:
        deltas = self.upstream.stream(
            HttpCall("POST", self.options.path, json=self.request_body(messages), idempotent=True), ollama_deltas
        )
        async with contextlib.aclosing(deltas):
            async for delta in deltas:
                yield delta

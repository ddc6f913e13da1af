"""OpenAI-compatible chat completions as an LLM backend: ``POST /v1/chat/completions`` with ``stream: true``.

The reply arrives as server-sent events, one ``data:`` JSON chunk per delta, ending with ``data: [DONE]``.
Works with OpenAI, vLLM, llama.cpp's server, LM Studio, and Ollama's ``/v1``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from stages.base import StageContext
from stages.engines.http_common import HttpBackend, bad, parse_json, sse_events
from stages.upstream import HttpCall, HttpOptions
from vocab.errors import UpstreamError
from vocab.options import require


async def chat_deltas(response: httpx.Response) -> AsyncIterator[str]:
    """Text deltas of an OpenAI chat-completions SSE stream; an ``error`` object or no ``[DONE]`` fails."""
    done = False
    async for event in sse_events(response):
        if done:
            continue  # read to the end so the connection goes back to the pool
        if event.data.strip() == "[DONE]":
            done = True
            continue
        chunk = parse_json(event.data, "chat completion chunk")
        if not isinstance(chunk, dict):
            raise bad(f"chat completion chunk is not an object: {event.data[:120]!r}")
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise bad(f"the service reported an error mid-stream: {message}")
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(content, str) and content:
                yield content
    if not done:
        raise UpstreamError("the stream ended before data: [DONE]", code="upstream_unavailable")


class OpenAiLlm(HttpBackend):
    kind: ClassVar[str] = "llm"
    backend_name = "openai"

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Options(HttpOptions):
        model: str
        path: str = "/v1/chat/completions"
        temperature: float | None = None
        max_tokens: int | None = None
        extra_body: dict[str, Any] = field(default_factory=dict)  # merged into every request body

        def validate(self) -> None:
            HttpOptions.validate(self)
            require(bool(self.model), "model", "must not be empty")
            require(self.path.startswith("/"), "path", "must start with '/'")
            require(self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be >= 1")

    def __init__(self, options: OpenAiLlm.Options) -> None:
        super().__init__(options)
        self.options = options

    def request_body(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.options.model, "messages": messages, "stream": True}
        if self.options.temperature is not None:
            body["temperature"] = self.options.temperature
        if self.options.max_tokens is not None:
            body["max_tokens"] = self.options.max_tokens
        return {**body, **self.options.extra_body}

    async def stream(self, messages: list[dict[str, str]], *, ctx: StageContext) -> AsyncIterator[str]:
        call = HttpCall(
            "POST",
            self.options.path,
            json=self.request_body(messages),
            headers={"Accept": "text/event-stream"},
            idempotent=True,  # a completion asked again does no harm
        )
        deltas = self.upstream.stream(call, chat_deltas)
        async with contextlib.aclosing(deltas):
            async for delta in deltas:
                yield delta

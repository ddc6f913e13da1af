"""A Dify chat app as an LLM backend: ``POST /v1/chat-messages`` with ``response_mode: streaming``.

Dify keeps the conversation itself: only the user's newest message is sent, with the session's Dify
``conversation_id`` (kept in ``ctx.extra``). SSE events: ``message``/``agent_message`` carry ``answer``
deltas, ``message_end`` ends the reply, ``error`` reports a failure, ``event: ping`` keeps it alive.
When a reply is cut off (barge-in), the stream is closed and Dify's task is told to stop
(``POST /v1/chat-messages/{task_id}/stop``) so it stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx

from stages.base import StageContext
from stages.engines.http_common import HttpBackend, bad, body_bytes, parse_json, sse_events
from stages.upstream import HttpCall, HttpOptions
from vocab.errors import UpstreamError
from vocab.options import require

log = logging.getLogger("voxpipe.dify")

CONVERSATION_KEY = "dify.conversation_id"
MAX_PENDING_STOPS = 32  # stop requests in flight; past it a cut-off reply is left to finish in Dify


@dataclass(slots=True)
class _Reply:
    """What the parser saw of one reply (the caller needs the task id to stop it)."""

    task_id: str | None = None
    conversation_id: str | None = None
    texts: int = 0


def dify_answers(
    reply: _Reply, on_conversation: Callable[[str], None]
) -> Callable[[httpx.Response], AsyncIterator[str]]:
    async def parse(response: httpx.Response) -> AsyncIterator[str]:
        ended = False
        async for event in sse_events(response):
            if ended:
                continue
            obj = parse_json(event.data, "Dify event")
            if not isinstance(obj, dict):
                raise bad(f"Dify event is not an object: {event.data[:120]!r}")
            kind = obj.get("event")
            reply.task_id = obj.get("task_id") or reply.task_id
            conversation = obj.get("conversation_id")
            if isinstance(conversation, str) and conversation and conversation != reply.conversation_id:
                reply.conversation_id = conversation
                on_conversation(conversation)
            if kind in ("message", "agent_message"):
                answer = obj.get("answer")
                if not isinstance(answer, str):
                    raise bad(f"Dify {kind} event without a string answer")
                if answer:
                    reply.texts += 1
                    yield answer
            elif kind == "message_replace":  # moderation replaced the answer
                if reply.texts == 0 and isinstance(obj.get("answer"), str):
                    reply.texts += 1
                    yield obj["answer"]
                else:
                    log.warning("dify: message_replace after text was spoken; ignored")
            elif kind == "message_end":
                ended = True
            elif kind == "error":
                status, code, message = obj.get("status"), obj.get("code"), obj.get("message")
                raise bad(f"Dify error event ({status} {code}): {message}")
        if not ended:
            raise UpstreamError("the stream ended before message_end", code="upstream_unavailable")

    return parse


async def _drain(response: httpx.Response) -> AsyncIterator[None]:
    await body_bytes(response, max_bytes=64 << 10)  # a stop's answer is tiny
    yield None


class DifyLlm(HttpBackend):
    kind: ClassVar[str] = "llm"
    backend_name = "dify"

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Options(HttpOptions):
        path: str = "/v1/chat-messages"
        inputs: dict[str, Any] = field(default_factory=dict)  # the app's input variables
        system_prompt_input: str | None = None  # input variable that gets the session's system prompt
        user_prefix: str = "voxpipe-"  # Dify's ``user`` is this plus the session id
        auto_generate_name: bool = False  # Dify names new conversations with an extra LLM call when true
        stop_on_cancel: bool = True  # tell Dify to stop a reply that was cut off

        def validate(self) -> None:
            HttpOptions.validate(self)
            require(self.path.startswith("/"), "path", "must start with '/'")

    def __init__(self, options: DifyLlm.Options) -> None:
        super().__init__(options)
        self.options = options
        self._stops: set[asyncio.Task[None]] = set()

    def request_body(self, query: str, ctx: StageContext) -> dict[str, Any]:
        inputs = dict(self.options.inputs)
        if self.options.system_prompt_input:
            inputs[self.options.system_prompt_input] = ctx.system_prompt
        return {
            "inputs": inputs,
            "query": query,
            "response_mode": "streaming",
            "conversation_id": ctx.extra.get(CONVERSATION_KEY, ""),
            "user": self.options.user_prefix + ctx.session_id,
            "auto_generate_name": self.options.auto_generate_name,
            "files": [],
        }

    async def stream(self, messages: list[dict[str, str]], *, ctx: StageContext) -> AsyncIterator[str]:
        query = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        reply = _Reply(conversation_id=ctx.extra.get(CONVERSATION_KEY))

        def remember(conversation_id: str) -> None:
            ctx.extra[CONVERSATION_KEY] = conversation_id

        # not idempotent: the app may run tools, and the first request starts a conversation
        call = HttpCall(
            "POST", self.options.path, json=self.request_body(query, ctx), headers={"Accept": "text/event-stream"}
        )
        answers = self.upstream.stream(call, dify_answers(reply, remember))
        try:
            async with contextlib.aclosing(answers):
                async for answer in answers:
                    yield answer
        except (GeneratorExit, asyncio.CancelledError):
            if reply.task_id and self.options.stop_on_cancel:
                self._stop_later(reply.task_id, self.options.user_prefix + ctx.session_id)
            raise

    def _stop_later(self, task_id: str, user: str) -> None:
        """Best effort, in the background: the cut-off turn must not wait for Dify."""
        if len(self._stops) >= MAX_PENDING_STOPS:
            return
        task = asyncio.get_running_loop().create_task(self._stop(task_id, user))
        self._stops.add(task)
        task.add_done_callback(self._stops.discard)

    async def _stop(self, task_id: str, user: str) -> None:
        call = HttpCall("POST", f"{self.options.path}/{task_id}/stop", json={"user": user}, idempotent=True)
        try:
            async with asyncio.timeout(5.0):
                stop = self.upstream.stream(call, _drain)
                async with contextlib.aclosing(stop):
                    async for _ in stop:
                        pass
        except (UpstreamError, TimeoutError) as exc:
            log.info("dify: stopping task %s failed: %s", task_id, exc)

    async def aclose(self) -> None:
        for task in list(self._stops):
            task.cancel()
        await asyncio.gather(*self._stops, return_exceptions=True)
        await super().aclose()

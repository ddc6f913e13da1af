"""Fake chat services: Ollama's native ``/api/chat`` (NDJSON) and a Dify chat app (SSE events, conversations, stop)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from tests.fakes.base import FakeService, tokens
from tests.fakes.http import Exchange


class FakeOllama(FakeService):
    def __init__(self, *, models: tuple[str, ...] = ("llama3.2",)) -> None:
        super().__init__()
        self.models = models

    async def http_error(self, ex: Exchange, status: int) -> None:
        await ex.respond_json(status, {"error": f"fake failure {status}"})

    async def route(self, ex: Exchange, behavior: str) -> None:
        if ex.request.path != "/api/chat":
            await ex.respond(404, b"404 page not found", "text/plain")
            return
        body = ex.request.json()
        if body.get("model") not in self.models:
            await ex.respond_json(404, {"error": f'model "{body.get("model")}" not found, try pulling it first'})
            return
        user = [m["content"] for m in body["messages"] if m["role"] == "user"]
        stamp = "2025-01-01T00:00:00.000000Z"

        def line(obj: dict[str, Any]) -> bytes:
            return json.dumps({"model": body["model"], "created_at": stamp, **obj}).encode() + b"\n"

        pieces = [
            line({"message": {"role": "assistant", "content": t}, "done": False})
            for t in tokens(f"You said: {user[-1] if user else ''}")
        ]
        pieces.append(
            line(
                {
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "stop",
                    "total_duration": 1234567,
                    "load_duration": 1000,
                    "prompt_eval_count": 10,
                    "eval_count": len(pieces),
                    "eval_duration": 100000,
                }
            )
        )
        await ex.send_head(200, {"Content-Type": "application/x-ndjson"})
        await self.stream_pieces(
            ex,
            pieces,
            behavior,
            bad_piece=b'{"model": "llama3.2", "message": {\n',
            error_piece=b'{"error":"an error was encountered while running the model"}\n',
        )


# ---------------------------------------------------------------------- Dify


class FakeDify(FakeService):
    """A Dify chat app: keeps conversations (per user), answers "You said: <query>. Message <n>."."""

    def __init__(self, *, api_key: str = "app-fake-key") -> None:
        super().__init__(api_key=api_key)
        self.conversations: dict[str, list[str]] = {}
        self.stopped: list[tuple[str, str]] = []  # (task_id, user)
        self.tasks: dict[str, asyncio.Event] = {}
        self.tool_runs = 0  # side effects an agent's tools had (``agent_thought_drop``)

    async def http_error(self, ex: Exchange, status: int) -> None:
        await ex.respond_json(
            status, {"code": "internal_server_error", "message": f"fake failure {status}", "status": status}
        )

    async def route(self, ex: Exchange, behavior: str) -> None:
        if not self._authorized(ex):
            await ex.respond_json(401, {"code": "unauthorized", "message": "Access token is invalid", "status": 401})
            return
        path = ex.request.path
        if path.startswith("/v1/chat-messages/") and path.endswith("/stop"):
            task_id = path.split("/")[3]
            self.stopped.append((task_id, ex.request.json().get("user", "")))
            if task_id in self.tasks:
                self.tasks[task_id].set()
            await ex.respond_json(200, {"result": "success"})
            return
        if path != "/v1/chat-messages":
            await ex.respond_json(
                404, {"code": "not_found", "message": "The requested URL was not found", "status": 404}
            )
            return
        await self.chat(ex, behavior)

    async def chat(self, ex: Exchange, behavior: str) -> None:
        body = ex.request.json()
        for key in ("query", "user", "inputs"):
            if key not in body:
                await ex.respond_json(400, {"code": "invalid_param", "message": f"{key} is required", "status": 400})
                return
        if body.get("response_mode") != "streaming":
            await ex.respond_json(400, {"code": "invalid_param", "message": "this fake only streams", "status": 400})
            return
        conversation = body.get("conversation_id") or ""
        if conversation and conversation not in self.conversations:
            await ex.respond_json(404, {"code": "not_found", "message": "Conversation Not Exists.", "status": 404})
            return
        conversation = conversation or str(uuid.uuid4())
        history = self.conversations.setdefault(conversation, [])
        history.append(body["query"])
        task_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
        self.tasks[task_id] = asyncio.Event()
        ids = {"task_id": task_id, "message_id": message_id, "conversation_id": conversation}

        def event(obj: dict[str, Any]) -> bytes:
            return b"data: " + json.dumps(obj).encode() + b"\n\n"

        pieces = [b"event: ping\n\n", event({"event": "workflow_started", **ids, "data": {"id": "run-1"}})]
        if behavior == "agent_thought_drop":  # an agent ran a tool (a side effect), then the connection drops
            thought = {"event": "agent_thought", **ids, "thought": "", "tool": "send_email", "tool_input": "{}"}
            await ex.send_head(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            for piece in [*pieces, event(thought)]:
                await ex.send(piece)
            self.tool_runs += 1
            ex.abort()
            return
        for t in tokens(f"You said: {body['query']}. Message {len(history)}."):
            pieces.append(
                event({"event": "message", **ids, "id": message_id, "answer": t, "created_at": int(time.time())})
            )
        pieces.append(b"event: ping\n\n")
        pieces.append(
            event({"event": "message_end", **ids, "id": message_id, "metadata": {"usage": {"total_tokens": 42}}})
        )
        error = event(
            {
                "event": "error",
                **ids,
                "status": 400,
                "code": "completion_request_error",
                "message": "model quota exceeded",
            }
        )
        await ex.send_head(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        if behavior == "error_first":  # the app ran (workflow started) and failed before any answer
            for piece in [*pieces[:2], error]:
                await ex.send(piece)
            await ex.end()
            return
        await self.stream_pieces(
            ex, pieces, behavior, bad_piece=b'data: {"event": "message", "answer\n\n', error_piece=error
        )

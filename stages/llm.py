"""LLM stage: turns the user's text of a turn into streamed reply deltas, with the session's history.

The user message joins the history when generation starts; the agent's message is added by the
session (whole at the end, or cut to what was spoken on interruption). The turn's ``ReplyPlan`` may
say not to answer (the words only join the history), to answer from the history with no new words
(a response the client asked for), or with other instructions than the system prompt. Backends implement
``LlmBackend.stream``; cancelling the turn closes the stream, which must stop the backend's work.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar, Protocol

from stages.base import Backend, BaseStage, Emitter, StageContext, StageKind
from stages.items import Item, ReplyDelta, committed_text
from vocab.options import require
from vocab.telemetry import Span, outcome_of, use_span


class LlmBackend(Backend, Protocol):
    kind: ClassVar[str]  # "llm"

    def stream(self, messages: list[dict[str, str]], *, ctx: StageContext) -> AsyncIterator[str]:
        """Reply text deltas. Closing the iterator early (barge-in) must stop generation at once."""
        ...


@dataclass(frozen=True, slots=True)
class Options:
    max_history_chars: int = 6000  # oldest messages are left out of the prompt beyond this

    def validate(self) -> None:
        require(self.max_history_chars >= 0, "max_history_chars", "must be >= 0")


def prompt_messages(system_prompt: str, history: list[dict[str, str]], max_chars: int) -> list[dict[str, str]]:
    """System prompt plus the newest history that fits in ``max_chars`` (the last message always)."""
    kept: list[dict[str, str]] = []
    used = 0
    for message in reversed(history):
        used += len(message["content"])
        if kept and used > max_chars:
            break
        kept.append(message)
    kept.reverse()
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + kept


class LlmStage(BaseStage):
    interruptible: ClassVar[bool] = True

    def __init__(self, options: Options, backend: LlmBackend, ctx: StageContext) -> None:
        self.options = options
        self.backend = backend
        self.ctx = ctx
        self.turn: int | None = None
        self.text: list[str] = []

    async def process(self, item: Item, out: Emitter) -> None:
        text = committed_text(item)
        if text is None:
            return
        if item.turn != self.turn:
            self.turn, self.text = item.turn, []
        self.text.append(text)

    async def finish(self, turn: int, out: Emitter) -> None:
        user_text = "".join(self.text).strip() if turn == self.turn else ""
        self.turn, self.text = None, []
        plan = self.ctx.reply_plan(turn)
        if user_text:
            self.ctx.conversation.add_user(turn, user_text)
        if not plan.reply or not (user_text or plan.from_history):
            return
        history = self.ctx.conversation.messages()
        system_prompt = self.ctx.system_prompt if plan.instructions is None else plan.instructions
        messages = prompt_messages(system_prompt, history, self.options.max_history_chars)
        await self._generate(turn, messages, out)

    async def _generate(self, turn: int, messages: list[dict[str, str]], out: Emitter) -> None:
        """Stream the reply. Traced as ``llm.generate`` (ends ``cancelled`` when the turn is cut off) with
        ``llm.first_token`` inside it; upstream attempts attach to it (the current span)."""
        span = self.ctx.trace(turn).child("llm.generate", stage=self.name, engine=self.engine, messages=len(messages))
        first: Span | None = span.child("llm.first_token", stage=self.name, engine=self.engine)
        deltas = chars = 0
        failure: BaseException | None = None
        with span, use_span(span):
            try:
                stream = self.backend.stream(messages, ctx=self.ctx)
                async with contextlib.aclosing(stream):  # type: ignore[type-var]
                    async for delta in stream:
                        if delta:
                            if first is not None:
                                first.end()
                                first = None
                            deltas, chars = deltas + 1, chars + len(delta)
                            await out.emit(ReplyDelta(turn, delta))
            except BaseException as exc:
                failure = exc
                raise
            finally:
                span.set(deltas=deltas, chars=chars)
                if first is not None:  # no token came: the span still says how long it waited and how it ended
                    outcome, code = outcome_of(failure)
                    first.end(outcome, error=code)
        await out.emit(ReplyDelta(turn, "", final=True))


KIND: StageKind[LlmBackend] = StageKind("llm", "text", "text", Options, LlmStage)

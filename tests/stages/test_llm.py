"""stages/llm.py: the prompt (system prompt + the newest history that fits) and one turn through the stage."""

from __future__ import annotations

from typing import Any

from stages.engines.testing import EchoLlm
from stages.items import Item, ReplyDelta, Transcription
from stages.llm import LlmStage, Options, prompt_messages
from tests.stage_context import stage_context


def test_prompt_is_the_system_prompt_then_the_newest_messages_that_fit() -> None:
    history = [{"role": "user", "content": "x" * 50}, {"role": "assistant", "content": "y" * 30}]
    history.append({"role": "user", "content": "z" * 30})
    assert prompt_messages("sys", history, 110) == [{"role": "system", "content": "sys"}, *history]
    assert prompt_messages("sys", history, 60) == [{"role": "system", "content": "sys"}, *history[1:]]
    assert prompt_messages("", history, 60) == history[1:]


def test_the_last_message_is_kept_even_when_it_alone_is_too_long() -> None:
    history = [{"role": "user", "content": "a"}, {"role": "user", "content": "b" * 500}]
    assert prompt_messages("", history, 10) == history[1:]


class Collect:
    def __init__(self) -> None:
        self.items: list[Item] = []

    async def emit(self, item: Item) -> None:
        self.items.append(item)


async def test_a_turn_adds_the_users_message_and_streams_the_reply() -> None:
    ctx = stage_context(system_prompt="be brief")
    stage = LlmStage(Options(), EchoLlm(EchoLlm.Options(delay_ms=0)), ctx)
    out = Collect()
    await stage.process(Transcription(3, "hello", final=True), out)
    await stage.process(Transcription(3, "partial", final=False), out)  # not committed text: ignored
    await stage.finish(3, out)
    assert ctx.conversation.messages() == [{"role": "user", "content": "hello"}]
    deltas: list[Any] = out.items
    assert "".join(d.text for d in deltas) == "You said: hello. I remember 0 messages."
    assert deltas[-1] == ReplyDelta(3, "", final=True)


async def test_a_turn_with_no_words_asks_nothing() -> None:
    ctx = stage_context()
    stage = LlmStage(Options(), EchoLlm(EchoLlm.Options(delay_ms=0)), ctx)
    out = Collect()
    await stage.process(Transcription(1, "   ", final=True), out)
    await stage.finish(1, out)
    assert out.items == []
    assert ctx.conversation.messages() == []


async def test_a_turn_planned_without_a_reply_only_adds_the_words() -> None:
    from stages.base import ReplyPlan

    ctx = stage_context(reply_plan=lambda turn: ReplyPlan(reply=False))
    stage = LlmStage(Options(), EchoLlm(EchoLlm.Options(delay_ms=0)), ctx)
    out = Collect()
    await stage.process(Transcription(2, "remember this", final=True), out)
    await stage.finish(2, out)
    assert out.items == []
    assert ctx.conversation.messages() == [{"role": "user", "content": "remember this"}]


async def test_a_response_from_history_with_its_own_instructions() -> None:
    from stages.base import ReplyPlan

    seen: list[list[dict[str, str]]] = []

    class Spy(EchoLlm):
        async def stream(self, messages: list[dict[str, str]], *, ctx: Any) -> Any:
            seen.append(messages)
            async for delta in super().stream(messages, ctx=ctx):
                yield delta

    ctx = stage_context(
        system_prompt="be brief", reply_plan=lambda turn: ReplyPlan(from_history=True, instructions="say hi")
    )
    ctx.conversation.add_user(1, "earlier words")
    stage = LlmStage(Options(), Spy(EchoLlm.Options(delay_ms=0)), ctx)
    out = Collect()
    await stage.finish(4, out)  # no new text at all
    assert seen == [[{"role": "system", "content": "say hi"}, {"role": "user", "content": "earlier words"}]]
    assert "".join(d.text for d in out.items if isinstance(d, ReplyDelta)).startswith("You said: earlier words")

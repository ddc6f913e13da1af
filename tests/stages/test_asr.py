"""``stages/asr.py``: the speculative final decode started at a pause becomes the final transcription."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from stages.asr import AsrStage, Heard, Options, heard
from stages.base import StageContext
from stages.items import Item, SpeechAudio, Transcription
from tests.client import silence, tone
from tests.room import piper_or_skip
from tests.speech import said
from tests.stage_context import stage_context

RATE_HZ = 16000


class CountingAsr:
    """A real AsrBackend that names the audio it got; counts its calls."""

    kind: ClassVar[str] = "asr"
    rate_hz: int | None = RATE_HZ

    def __init__(self, decode_s: float = 0.05) -> None:
        self.calls: list[tuple[float, bool]] = []
        self.decode_s = decode_s

    async def transcribe(self, pcm: bytes, *, rate_hz: int, final: bool, ctx: StageContext) -> str:
        self.calls.append((len(pcm) / 2 / rate_hz * 1000, final))
        await asyncio.sleep(self.decode_s)
        return f"{round(len(pcm) / 2 / rate_hz * 1000)} ms"

    def load(self, log: Callable[[str], None]) -> None:
        return None

    async def aclose(self) -> None:
        return None


class Collect:
    def __init__(self) -> None:
        self.items: list[Item] = []

    async def emit(self, item: Item) -> None:
        self.items.append(item)


def context(tasks: set[asyncio.Task[Any]]) -> StageContext:
    def spawn(coro: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        tasks.add(task)
        return task

    return stage_context(system_prompt="", spawn=spawn)


async def feed(stage: AsrStage, out: Collect, pieces: list[tuple[bytes, float]]) -> None:
    """(pcm, trailing silence ms) pieces of turn 1, in 20 ms steps of real time."""
    for pcm, trailing_ms in pieces:
        await stage.process(SpeechAudio(turn=1, pcm=pcm, rate_hz=RATE_HZ, trailing_silence_ms=trailing_ms), out)
        await asyncio.sleep(0)  # lets a decode the piece started begin (it runs while the audio goes on)


def speech_then_pause(pause_ms: int) -> list[tuple[bytes, float]]:
    pieces = [(tone(20, RATE_HZ), 0.0) for _ in range(25)]
    pieces += [(silence(20, RATE_HZ), 20.0 * (i + 1)) for i in range(pause_ms // 20)]
    return pieces


async def test_the_pause_decode_is_the_final_when_no_voice_follows() -> None:
    tasks: set[asyncio.Task[Any]] = set()
    backend = CountingAsr()
    stage = AsrStage(Options(partial_interval_ms=0, pause_decode_ms=120), backend, context(tasks))
    out = Collect()
    await feed(stage, out, speech_then_pause(300))
    await stage.finish(1, out)
    assert backend.calls == [(620.0, True)]  # one decode, started at the pause (500 ms speech + 120 ms)
    assert out.items == [Transcription(1, "620 ms", final=True)]


async def test_voice_after_the_pause_drops_the_speculative_decode() -> None:
    tasks: set[asyncio.Task[Any]] = set()
    backend = CountingAsr()
    stage = AsrStage(Options(partial_interval_ms=0, pause_decode_ms=120), backend, context(tasks))
    out = Collect()
    pieces = speech_then_pause(200) + [(tone(20, RATE_HZ), 0.0) for _ in range(10)] + speech_then_pause(300)[25:]
    await feed(stage, out, pieces)
    await stage.finish(1, out)
    final = [item for item in out.items if isinstance(item, Transcription) and item.final]
    # the second pause's decode covers everything up to it, and it is used as the final
    assert final == [Transcription(1, f"{round(backend.calls[-1][0])} ms", final=True)]
    assert backend.calls[-1][0] == 500 + 200 + 200 + 120
    assert backend.calls[0] == (620.0, True)  # the first pause's decode, dropped


async def test_a_voice_frame_inside_a_longer_piece_counts_as_voice() -> None:
    tasks: set[asyncio.Task[Any]] = set()
    backend = CountingAsr()
    stage = AsrStage(Options(partial_interval_ms=0, pause_decode_ms=120), backend, context(tasks))
    out = Collect()
    pieces = speech_then_pause(140)
    # 200 ms piece: voice at its start, then 100 ms of silence: the silence run did not keep growing
    pieces.append((tone(100, RATE_HZ) + silence(100, RATE_HZ), 100.0))
    await feed(stage, out, pieces)
    await stage.finish(1, out)
    assert backend.calls[-1] == (500 + 140 + 200, True)  # a fresh final over all the audio


async def test_pause_decoding_off_decodes_at_the_end() -> None:
    tasks: set[asyncio.Task[Any]] = set()
    backend = CountingAsr()
    stage = AsrStage(Options(partial_interval_ms=0, pause_decode_ms=0), backend, context(tasks))
    out = Collect()
    await feed(stage, out, speech_then_pause(300))
    await stage.finish(1, out)
    assert backend.calls == [(800.0, True)]


def test_punctuation_alone_is_no_words() -> None:
    # Whisper writes ". . . . ." for a noise: no words, so no turn to answer
    assert heard(Heard(" . . . . ", -0.4)) == Heard("", -0.4)
    assert heard("...") == Heard("")
    assert heard(" Wait. ") == Heard("Wait.")
    assert heard(Heard("2 plus 2?", -0.1)) == Heard("2 plus 2?", -0.1)


class FixedAsr(CountingAsr):
    """Hears the same words in any audio."""

    def __init__(self, text: str) -> None:
        super().__init__(decode_s=0.0)
        self.text = text

    async def transcribe(self, pcm: bytes, *, rate_hz: int, final: bool, ctx: StageContext) -> str:
        await super().transcribe(pcm, rate_hz=rate_hz, final=final, ctx=ctx)
        return self.text


@pytest.mark.models
@pytest.mark.parametrize("model", ["none", "smart-turn"])
async def test_with_a_turn_model_the_voice_must_sound_finished_too(model: str) -> None:
    """Whisper heard a whole sentence, but the voice stopped mid-sentence ("I was wondering if you could"):
    the turn model's score keeps the VAD waiting."""
    piper_or_skip()
    tasks: set[asyncio.Task[Any]] = set()
    options = Options(partial_interval_ms=0, pause_decode_ms=120, turn_model=model)
    stage = AsrStage(options, FixedAsr("Yes."), context(tasks))
    out = Collect()
    voice = said("I was wondering if you could", RATE_HZ)
    pieces = [(voice[i : i + 640], 0.0) for i in range(0, len(voice), 640)]
    pieces += [(silence(20, RATE_HZ), 20.0 * (i + 1)) for i in range(8)]
    await feed(stage, out, pieces)
    assert stage.pause_task is not None
    await stage.pause_task
    covers_ms, finished = stage.ctx.turn_hints[1]
    assert covers_ms == pytest.approx(len(voice) / 2 / RATE_HZ * 1000 + 120, abs=20)
    assert finished is (model == "none")

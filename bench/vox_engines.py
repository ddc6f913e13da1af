"""Benchmark-only voxpipe backends, registered at run time (``register()``), never in the product config.

- ``bench_vad``: a custom audio -> audio stage: the cheap VAD-like decision per 20 ms frame, then the
  frame (or silence) comes back as agent audio of one standing turn (an echo agent), so the outbox
  paces it like any TTS output.
- ``bench_stream``: a TTS backend that streams 20 ms pieces 4x faster than real time (B4's producer),
  behind voxpipe's real TTS stage.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import FRAME_BYTES, FRAME_S, voiced  # noqa: E402
from stages.base import BaseStage, Emitter, NothingToLoad, StageContext  # noqa: E402
from stages.items import AudioChunk, AudioIn, Item  # noqa: E402
from stages.registry import BACKENDS  # noqa: E402


def register() -> None:
    BACKENDS["bench_vad"] = "bench.vox_engines:BenchVad"
    BACKENDS["bench_stream"] = "bench.vox_engines:StreamTts"


class BenchVad(NothingToLoad):
    kind: ClassVar[str] = "custom"
    input_type: ClassVar[str] = "audio"
    output_type: ClassVar[str] = "audio"

    @dataclass(frozen=True, slots=True)
    class Options:
        pass

    def __init__(self, options: BenchVad.Options) -> None:
        self.options = options

    def new_stage(self, ctx: StageContext) -> _BenchVadStage:
        return _BenchVadStage(ctx)


class _BenchVadStage(BaseStage):
    interruptible: ClassVar[bool] = False
    inline: ClassVar[bool] = True  # like voxpipe's VAD stage
    _SILENCE = bytes(FRAME_BYTES)

    def __init__(self, ctx: StageContext) -> None:
        self.ctx = ctx
        self.turn: int | None = None

    async def process(self, item: Item, out: Emitter) -> None:
        if type(item) is not AudioIn:
            return
        turn = self.turn
        if turn is None or not self.ctx.is_live(turn):
            turn = self.turn = self.ctx.new_turn()
        pcm = item.pcm if voiced(item.pcm) else self._SILENCE
        await out.emit(AudioChunk(turn=turn, pcm=pcm, rate_hz=item.rate_hz))


class StreamTts(NothingToLoad):
    """Yields ``pieces`` pieces of 20 ms, one every ``FRAME_S / speed`` seconds."""

    kind: ClassVar[str] = "tts"
    rate_hz: int | None = None

    @dataclass(frozen=True, slots=True)
    class Options:
        speed: float = 4.0
        pieces: int = 200

    def __init__(self, options: StreamTts.Options) -> None:
        self.interval_s = FRAME_S / options.speed
        self.pieces = options.pieces

    async def synthesize(self, text: str, *, rate_hz: int, ctx: StageContext) -> AsyncIterator[bytes]:
        piece = b"\x00\x10" * (rate_hz * 20 // 1000)
        for _ in range(self.pieces):
            yield piece
            await asyncio.sleep(self.interval_s)

"""TTS stage: speaks reply text clause by clause as soon as each clause is complete.

A clause ends at sentence punctuation (after ``min_clause_chars``) or at ``max_clause_chars``
(split at a space). The first clause of a turn is cut sooner, at a comma too or at a space before
``first_clause_max_chars``: engines such as Piper synthesize a clause at once, so a short first
clause is the shortest path to the first audio; later clauses are synthesized while it plays.
Audio is resampled to the session's output rate and cut into ``chunk_ms`` chunks; the first chunk
of each clause carries its text so the session knows what was spoken.
A turn whose ``ReplyPlan`` does not speak (a text-only answer) is skipped.
Backends implement ``TtsBackend.synthesize``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from stages.base import Backend, BaseStage, Emitter, StageContext, StageKind
from stages.items import AudioChunk, Item, committed_text
from vocab.options import require
from vocab.telemetry import use_span


class TtsBackend(Backend, Protocol):
    kind: ClassVar[str]  # "tts"
    rate_hz: int | None  # rate it produces, or None when it renders at the rate asked

    def synthesize(self, text: str, *, rate_hz: int, ctx: StageContext) -> AsyncIterator[bytes]:
        """PCM16 LE mono pieces of any length; closing the iterator early must stop the work."""
        ...


@dataclass(frozen=True, slots=True)
class Options:
    chunk_ms: int = 20  # audio message duration
    min_clause_chars: int = 12  # shorter sentences wait for the next one
    max_clause_chars: int = 160  # longer text is split at a space
    first_clause_max_chars: int = 60  # a turn's first clause also ends at a comma, or at a space here; 0: off

    def validate(self) -> None:
        require(self.chunk_ms in (10, 20, 30, 40, 60, 80, 100), "chunk_ms", "must be 10/20/30/40/60/80/100")
        require(self.min_clause_chars >= 1, "min_clause_chars", "must be >= 1")
        require(self.max_clause_chars >= self.min_clause_chars, "max_clause_chars", "must be >= min_clause_chars")
        require(
            self.first_clause_max_chars == 0 or self.first_clause_max_chars > self.min_clause_chars,
            "first_clause_max_chars",
            "must be 0 (off) or > min_clause_chars",
        )


_CLAUSE_END = re.compile(r"[.!?;:…\n]+[\"')\]]*(\s+|$)")


def split_clauses(buffer: str, *, min_chars: int, max_chars: int, final: bool) -> tuple[list[str], str]:
    """Complete clauses in ``buffer`` and the rest; ``final`` flushes the rest as a clause."""
    clauses: list[str] = []
    start = 0
    for match in _CLAUSE_END.finditer(buffer):
        if match.end() == len(buffer) and not final and not match.group(1):
            break  # "3." may be "3.5": wait for what follows the punctuation
        if match.end() - start >= min_chars:
            clauses.append(buffer[start : match.end()])
            start = match.end()
    rest = buffer[start:]
    while len(rest) > max_chars:
        cut = rest.rfind(" ", 0, max_chars)
        cut = cut if cut > 0 else max_chars
        clauses.append(rest[:cut])
        rest = rest[cut:]
    if final and rest.strip():
        clauses.append(rest)
        rest = ""
    return [c.strip() for c in clauses if c.strip()], rest


_FIRST_CLAUSE_END = re.compile(r"[,.!?;:…\n]+[\"')\]]*(\s+|$)")


def first_clause(buffer: str, *, min_chars: int, max_chars: int) -> tuple[str | None, str]:
    """A turn's first clause, cut early: at any clause punctuation including a comma (after
    ``min_chars``), else at the last space before ``max_chars`` once the text is longer; and the rest."""
    for match in _FIRST_CLAUSE_END.finditer(buffer):
        if match.end() == len(buffer) and not match.group(1):
            break  # "3," may be "3,000": wait for what follows
        if match.end() >= min_chars and buffer[: match.end()].strip():
            return buffer[: match.end()].strip(), buffer[match.end() :]
    if len(buffer) > max_chars:
        cut = buffer.rfind(" ", min_chars, max_chars)
        if cut > 0:
            return buffer[:cut].strip(), buffer[cut:]
    return None, buffer


class TtsStage(BaseStage):
    interruptible: ClassVar[bool] = True

    def __init__(self, options: Options, backend: TtsBackend, ctx: StageContext) -> None:
        self.options = options
        self.backend = backend
        self.ctx = ctx
        self.turn: int | None = None
        self.buffer = ""
        self.first_pending = False  # the turn's first clause is still to be cut
        self.rate_hz = ctx.out_rate_hz
        self.chunk_bytes = int(self.rate_hz * options.chunk_ms / 1000) * 2
        self.spoken_turn: int | None = None  # the turn of the last clause spoken, and its index in the turn
        self.clauses = 0
        self.audio_bytes = 0  # handed on for the current clause

    async def process(self, item: Item, out: Emitter) -> None:
        text = committed_text(item)
        if text is None:
            return
        if item.turn is None or not self.ctx.reply_plan(item.turn).speak:
            return  # a text-only answer: nothing to say
        if item.turn != self.turn:
            self.turn, self.buffer = item.turn, ""
            self.first_pending = self.options.first_clause_max_chars > 0
        self.buffer += text
        if self.first_pending:
            clause, self.buffer = first_clause(
                self.buffer, min_chars=self.options.min_clause_chars, max_chars=self.options.first_clause_max_chars
            )
            if clause is None:
                return
            self.first_pending = False
            await self._speak(self.turn, clause, out)
        clauses, self.buffer = split_clauses(
            self.buffer,
            min_chars=self.options.min_clause_chars,
            max_chars=self.options.max_clause_chars,
            final=False,
        )
        for clause in clauses:
            await self._speak(self.turn, clause, out)

    async def finish(self, turn: int, out: Emitter) -> None:
        if turn != self.turn:
            return
        clauses, _ = split_clauses(self.buffer, min_chars=1, max_chars=self.options.max_clause_chars, final=True)
        self.turn, self.buffer = None, ""
        for clause in clauses:
            await self._speak(turn, clause, out)

    async def _speak(self, turn: int, clause: str, out: Emitter) -> None:
        """One clause, traced as ``tts.clause`` (its text length, audio ms and bytes; ``cancelled`` when cut)."""
        self.clauses = self.clauses + 1 if turn == self.spoken_turn else 0
        self.spoken_turn = turn
        span = self.ctx.trace(turn).child(
            "tts.clause", stage=self.name, engine=self.engine, clause=self.clauses, chars=len(clause)
        )
        self.audio_bytes = 0
        with span, use_span(span):
            try:
                await self._synthesize(turn, clause, out)
            finally:
                span.set(audio_bytes=self.audio_bytes, audio_ms=round(self.audio_bytes * 500.0 / self.rate_hz, 1))

    async def _synthesize(self, turn: int, clause: str, out: Emitter) -> None:
        """Reads one piece ahead, so a clause that arrives whole carries its duration (for ``spoken``)."""
        backend_rate = self.backend.rate_hz or self.rate_hz
        resampler: Any = None
        if backend_rate != self.rate_hz:
            from stages.resample import Resampler

            resampler = Resampler(backend_rate, self.rate_hz)
        pending = b""
        held: bytes | None = None
        text: str | None = clause
        stream = self.backend.synthesize(clause, rate_hz=backend_rate, ctx=self.ctx)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for pcm in stream:
                if held is not None:
                    pending, text = await self._emit_chunks(turn, pending + held, text, 0.0, out, final=False)
                held = pcm if resampler is None else resampler.process(pcm)
        tail = (held or b"") + (resampler.flush() if resampler is not None else b"")
        whole = pending + tail
        text_ms = len(whole) * 500.0 / self.rate_hz if text is not None else 0.0
        await self._emit_chunks(turn, whole, text, text_ms, out, final=True)

    async def _emit_chunks(
        self, turn: int, pcm: bytes, text: str | None, text_ms: float, out: Emitter, *, final: bool
    ) -> tuple[bytes, str | None]:
        step = self.chunk_bytes
        end = len(pcm) if final else len(pcm) - len(pcm) % step
        for start in range(0, end, step):
            piece = pcm[start : min(start + step, end)]
            await out.emit(AudioChunk(turn=turn, pcm=piece, rate_hz=self.rate_hz, text=text, text_ms=text_ms))
            self.audio_bytes += len(piece)
            text, text_ms = None, 0.0
        return pcm[end:], text


KIND: StageKind[TtsBackend] = StageKind("tts", "text", "audio", Options, TtsStage)

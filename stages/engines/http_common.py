"""What the HTTP backends share: a base with ``load``/``aclose`` around ``stages.upstream.Upstream``, and the
body formats they read (SSE events, NDJSON lines, a streamed WAV) or send (a WAV file for upload).

Parsers raise ``UpstreamError('upstream_bad_response')`` on a malformed body, so the upstream call can
retry it (before the first item) or end the reply with that code. Every read is capped (a broken proxy's
endless error page, an event with no blank line, a WAV header that says its chunk is 4 GiB): past a cap the
body is a bad response, never a reason to grow memory.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import wave
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from stages.base import StageContext
from stages.upstream import HttpCall, HttpOptions, Upstream
from vocab.errors import UpstreamError

MAX_LINE_BYTES = 1 << 20  # one SSE or NDJSON line; chat deltas are a few hundred bytes
MAX_BODY_BYTES = 8 << 20  # a body read whole (a transcription's JSON)
MAX_WAV_HEADER_BYTES = 64 << 10  # RIFF header chunks before the data chunk
WAV_RATES_HZ = (4000, 384000)  # a rate outside is a broken header (1 Hz would mean 24,000x upsampling)
_EOL = re.compile(rb"\r\n|\r|\n")


class HttpBackend:
    """Base of every HTTP backend: one ``Upstream`` (endpoints, breakers, pooled client) per config entry."""

    backend_name: str = "http"  # the config name (``engine: openai``), in logs and metrics labels

    def __init__(self, options: HttpOptions) -> None:
        self.upstream = Upstream(options, backend=self.backend_name)

    def load(self, log: Callable[[str], None]) -> None:
        self.upstream.check_keys()
        urls = ", ".join(ep.name for ep in self.upstream.pool.endpoints)
        log(f"voxpipe: {self.backend_name} upstream: {urls} ({self.upstream.options.strategy})")

    async def aclose(self) -> None:
        await self.upstream.aclose()


def bad(message: str) -> UpstreamError:
    return UpstreamError(message, code="upstream_bad_response")


async def body_bytes(response: httpx.Response, *, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, or ``upstream_bad_response`` as soon as it grows past ``max_bytes``."""
    body = bytearray()
    async for piece in response.aiter_bytes():
        body += piece
        if len(body) > max_bytes:
            raise bad(f"body over {max_bytes} bytes")
    return bytes(body)


async def body_lines(response: httpx.Response, *, max_line_bytes: int = MAX_LINE_BYTES) -> AsyncIterator[str]:
    """Lines of a streamed body, split at ``\\r\\n``, ``\\n`` or ``\\r`` (as SSE says), decoded as UTF-8.

    httpx's ``aiter_lines`` keeps a line that never ends in memory for ever; here a line longer than
    ``max_line_bytes`` is ``upstream_bad_response``.
    """
    pending = bytearray()
    async for piece in response.aiter_bytes():
        pending += piece
        start = 0
        while (end := _EOL.search(pending, start)) is not None:
            if end.group() == b"\r" and end.end() == len(pending):
                break  # a \r\n may be split between two pieces: wait for the next
            yield pending[start : end.start()].decode("utf-8", "replace")
            start = end.end()
        del pending[:start]
        if len(pending) > max_line_bytes:
            raise bad(f"line over {max_line_bytes} bytes")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", "replace")


def parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise bad(f"malformed JSON in {what}: {text[:120]!r}") from None


# ------------------------------------------------------------------ server-sent events


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # "message" when the server named none
    data: str


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Events of a ``text/event-stream`` body (data lines joined by newlines; comments skipped).

    An event is dispatched at its blank line; one still pending when the body ends is dispatched too
    (some servers omit the last blank line).
    """
    event = ""
    data: list[str] = []
    async for line in body_lines(response):
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue  # comment / keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name not in ("id", "retry"):
            raise bad(f"malformed server-sent event line: {line[:120]!r}")
    if data:
        yield SseEvent(event or "message", "\n".join(data))


async def ndjson_objects(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """One JSON object per non-empty line (``application/x-ndjson``)."""
    async for line in body_lines(response):
        if not line.strip():
            continue
        obj = parse_json(line, "NDJSON line")
        if not isinstance(obj, dict):
            raise bad(f"NDJSON line is not an object: {line[:120]!r}")
        yield obj


# ------------------------------------------------------------------ audio bodies


def wav_bytes(pcm: bytes, rate_hz: int) -> bytes:
    """A PCM16 mono WAV file (for upload)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate_hz)
        out.writeframes(pcm)
    return buf.getvalue()


class WavStreamReader:
    """Incremental WAV reader: ``feed`` pieces of a streamed ``.wav`` body, get PCM16 back.

    Streaming servers write a header whose sizes are 0 or 0xFFFFFFFF (length unknown): then all bytes
    after the ``data`` chunk header are audio. A real size is respected (chunks after the data are
    ignored). Only PCM16 mono is accepted; ``rate_hz`` is known once the header has been read.
    """

    def __init__(self) -> None:
        self.rate_hz: int | None = None
        self._head = bytearray()
        self._in_data = False
        self._data_left: int | None = None  # None: until the end of the body

    def feed(self, piece: bytes) -> bytes:
        if self._in_data:
            return self._take(piece)
        self._head += piece
        return self._parse_header()

    def _take(self, piece: bytes) -> bytes:
        if self._data_left is None:
            return piece
        piece = piece[: self._data_left]
        self._data_left -= len(piece)
        return piece

    def _parse_header(self) -> bytes:
        head = self._head
        if len(head) < 12:
            return b""
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            raise bad(f"not a WAV body (starts with {bytes(head[:12])!r})")
        pos = 12
        while len(head) >= pos + 8:
            chunk_id, size = bytes(head[pos : pos + 4]), struct.unpack_from("<I", head, pos + 4)[0]
            if chunk_id == b"data":
                if self.rate_hz is None:
                    raise bad("WAV body has no fmt chunk before its data")
                self._in_data = True
                self._data_left = None if size in (0, 0xFFFFFFFF) else size
                rest = bytes(head[pos + 8 :])
                self._head = bytearray()
                return self._take(rest)
            if pos + 8 + size > MAX_WAV_HEADER_BYTES:
                raise bad(f"WAV header over {MAX_WAV_HEADER_BYTES} bytes (a {chunk_id!r} chunk of {size} bytes)")
            if len(head) < pos + 8 + size:
                return b""  # wait for the rest of this chunk
            if chunk_id == b"fmt ":
                fmt, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", head, pos + 8)
                if fmt not in (1, 0xFFFE) or bits != 16 or channels != 1:
                    raise bad(f"WAV is not PCM16 mono (format {fmt}, {bits} bits, {channels} channels)")
                if not WAV_RATES_HZ[0] <= rate <= WAV_RATES_HZ[1]:
                    raise bad(f"WAV rate {rate} Hz is outside {WAV_RATES_HZ[0]}..{WAV_RATES_HZ[1]} Hz")
                self.rate_hz = rate
            pos += 8 + size + (size & 1)
        if len(head) > MAX_WAV_HEADER_BYTES:
            raise bad(f"WAV header over {MAX_WAV_HEADER_BYTES} bytes")
        return b""


class Pcm16Aligner:
    """Network pieces split samples anywhere; hand on whole 2-byte samples only."""

    def __init__(self) -> None:
        self._odd = b""

    def align(self, piece: bytes) -> bytes:
        piece = self._odd + piece
        cut = len(piece) & ~1
        self._odd = piece[cut:]
        return piece[:cut]


async def audio_body(
    response: httpx.Response, *, media: str, want_hz: int, learned: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """PCM16 at ``want_hz`` from a streamed ``pcm``/``raw`` or ``wav`` body.

    A WAV header tells the service's real rate: ``learned(rate)`` is called with it (the backend then
    asks for that rate next time), and this body is resampled to ``want_hz`` if it differs.
    """
    reader = WavStreamReader() if media == "wav" else None
    aligner = Pcm16Aligner()
    resampler: Any = None
    async for piece in response.aiter_bytes():
        if reader is not None:
            had_rate = reader.rate_hz is not None
            piece = reader.feed(piece)
            if not had_rate and reader.rate_hz is not None:
                learned(reader.rate_hz)
                if reader.rate_hz != want_hz:
                    from stages.resample import Resampler

                    resampler = Resampler(reader.rate_hz, want_hz)
        pcm = aligner.align(piece)
        if resampler is not None and pcm:
            pcm = resampler.process(pcm)
        if pcm:
            yield pcm
    if reader is not None and reader.rate_hz is None:
        raise bad("the WAV body ended before its header was complete")
    if resampler is not None and (tail := resampler.flush()):
        yield tail


class HttpTtsBackend(HttpBackend):
    """A TTS service: POST a JSON body to ``path``, PCM16 or WAV streamed back (``media``).

    ``rate_hz`` starts as the configured rate; a WAV header updates it to what the service really sends.
    """

    def __init__(self, options: HttpOptions, *, path: str, media: str, sample_rate_hz: int) -> None:
        super().__init__(options)
        self.path = path
        self.media = media
        self.rate_hz: int | None = sample_rate_hz

    def _learned(self, rate_hz: int) -> None:
        self.rate_hz = rate_hz

    def request_body(self, text: str, ctx: StageContext) -> dict[str, Any]:
        raise NotImplementedError

    async def synthesize(self, text: str, *, rate_hz: int, ctx: StageContext) -> AsyncIterator[bytes]:
        def parse(response: Any) -> AsyncIterator[bytes]:
            return audio_body(response, media=self.media, want_hz=rate_hz, learned=self._learned)

        call = HttpCall("POST", self.path, json=self.request_body(text, ctx), idempotent=True)  # speech again: harmless
        pieces = self.upstream.stream(call, parse)
        async with contextlib.aclosing(pieces):
            async for pcm in pieces:
                yield pcm

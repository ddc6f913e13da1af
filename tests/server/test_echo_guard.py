"""server/echo_guard.py through the real server: a simulated game client whose mic hears its speakers
(tests/room.py). Issue 9's bar: the echo alone never interrupts in 20 turns; the echo plus a person
talking interrupts within 400 ms. The server's echo canceller is off here: the guard alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.echo_guard import EchoGuard, EchoGuardOptions
from server.playhead import Playhead
from stages.items import AudioChunk
from tests.client import test_config
from tests.room import (
    LINES,
    PIPER_LINES,
    PIPER_LONG_LINE,
    PIPER_PERSON,
    double_talk_turns,
    echo_only_turns,
    other_voice,
    piper_or_skip,
    piper_other_voice,
    piper_pipeline,
    rms_dbfs,
    room,
    session_guard,
)
from transports import messages as m

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

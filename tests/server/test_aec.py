"""server/aec.py: WebRTC's AEC3 fed from the playout timeline, on a simulated room (tests/room.py's)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.aec import EchoCanceller, EchoCancellerOptions, available
from server.playhead import Playhead, Released
from tests.room import other_voice, room_response

RATE_HZ = 16000
FRAME = RATE_HZ // 50  # the client's 20 ms mic frames

pytestmark = pytest.mark.skipif(not available(), reason="the echo canceller needs the livekit package")


def erle_db(options: EchoCancellerOptions, *, jitter_ms: float, rt60_s: float, seed: int = 0) -> float:
    """The agent talks for 8 s; the mic hears it through a room. Arrival times and the client's ``played``
    acks jitter by up to ``jitter_ms`` (loopback under load). ERLE over the second half, in dB."""
    rng = np.random.default_rng(seed)
    head = Playhead(rate_hz=RATE_HZ, lead_ms=200, max_chunks=64, is_live=lambda _turn: True, clock=lambda: 0.0)
    aec = EchoCanceller(options, head, in_rate_hz=RATE_HZ, now=0.0)
    far = np.concatenate([other_voice(1900, rms_dbfs=-20, seed=i) for i in range(4)] + [np.zeros(RATE_HZ // 10)])
    starts_s = 0.1
    chunks = [  # released in 20 ms chunks on the timeline, 200 ms ahead of playout (lead_ms)
        Released(
            "tts",
            1,
            i // FRAME,
            np.clip(far[i : i + FRAME], -32768, 32767).astype("<i2").tobytes(),
            starts_s + i / RATE_HZ,
        )
        for i in range(0, far.size, FRAME)
    ]
    played = np.concatenate([np.zeros(int(starts_s * RATE_HZ)), far])
    mic = np.convolve(played, room_response(rt60_s, 60, seed=1))[: played.size] + rng.standard_normal(played.size)
    e_in = e_out = 0.0
    try:
        for n, k in enumerate(range(0, mic.size - FRAME + 1, FRAME)):
            while chunks and chunks[0].play_at < k / RATE_HZ + 0.2:
                aec._released(chunks.pop(0))
            if n % 5 == 0:  # an ack every 100 ms moves the estimate of the client's delay a little
                head.client_delay_s = rng.uniform(0, jitter_ms) / 1000
            arrived = (k + FRAME) / RATE_HZ + rng.uniform(0, jitter_ms) / 1000
            frame = np.clip(mic[k : k + FRAME], -32768, 32767).astype("<i2")
            out = np.frombuffer(aec.process(frame.tobytes(), arrived), dtype="<i2").astype(float)
            if k > mic.size // 2:
                heard = frame[: out.size].astype(float)
                e_in, e_out = e_in + heard @ heard, e_out + out @ out
    finally:
        aec.close()
    return 10 * math.log10(e_in / max(e_out, 1.0))


@pytest.mark.parametrize("rt60_s", [0.3, 0.6])
def test_timing_jitter_does_not_break_the_canceller(rt60_s: float) -> None:
    # AEC3 sees one unbroken far-end stream: the reference is not moved by each millisecond of jitter
    steady = erle_db(EchoCancellerOptions(residual_gate_db=0), jitter_ms=0, rt60_s=rt60_s)
    jittered = [erle_db(EchoCancellerOptions(residual_gate_db=0), jitter_ms=5, rt60_s=rt60_s, seed=s) for s in range(3)]
    print(f"RT60 {rt60_s}: ERLE steady {steady:.1f} dB, with 5 ms of jitter {[round(x, 1) for x in jittered]}")
    assert steady > 8.0
    assert min(jittered) > steady - 1.5


def test_following_every_jitter_is_what_broke_it() -> None:
    # the control: the old behaviour (the reference re-aligned on every estimate) loses the echo path
    followed = [
        erle_db(EchoCancellerOptions(residual_gate_db=0, realign_ms=0), jitter_ms=5, rt60_s=0.6, seed=s)
        for s in range(3)
    ]
    held = [erle_db(EchoCancellerOptions(residual_gate_db=0), jitter_ms=5, rt60_s=0.6, seed=s) for s in range(3)]
    print(f"RT60 0.6, 5 ms jitter: ERLE followed {[round(x, 1) for x in followed]}, held {[round(x, 1) for x in held]}")
    assert min(followed) < min(held) - 3.0

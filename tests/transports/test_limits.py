"""transports/limits.py on a fake clock: the token buckets, the audio budget, idle and max-duration deadlines."""

from __future__ import annotations

import base64

from transports import messages as m
from transports.limits import LimitOptions, SessionLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, busy: bool = False, **options: object) -> SessionLimiter:
    return SessionLimiter(
        LimitOptions(**options),  # type: ignore[arg-type]
        in_rate_hz=16000,
        max_frame_bytes=1 << 20,
        now=clock.now,
        busy=lambda: busy,
    )


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5.0, now=0.0)
    assert all(bucket.take(1.0, 0.0) for _ in range(5))
    assert not bucket.take(1.0, 0.0)
    assert bucket.take(1.0, 0.1)  # 0.1 s refills one
    assert not bucket.take(1.0, 0.1)
    assert bucket.take(5.0, 10.0)  # never above capacity
    assert not bucket.take(0.5, 10.0)


def test_message_rate() -> None:
    clock = Clock()
    lim = limiter(clock, messages_per_s=10, messages_burst=3)
    assert [lim.on_frame(clock.now) for _ in range(3)] == [None, None, None]
    err = lim.on_frame(clock.now)
    assert err is not None
    assert (err.code, err.fatal, err.close_code) == ("rate_limited", True, 1008)
    clock.now += 0.1
    assert lim.on_frame(clock.now) is None


def test_audio_budget_is_twice_real_time_and_fits_one_max_frame() -> None:
    clock = Clock()
    lim = limiter(clock, audio_max_realtime=2.0, audio_burst_s=1.0)
    one_s = m.Audio(b"\x00" * 32000)
    big = m.Audio(b"\x00" * (1 << 20))  # 32.8 s of 16 kHz audio: bigger than the 1 s burst, still allowed
    assert lim.on_message(big, clock.now) is None
    for _ in range(30):  # then exactly 2x real time is sustainable
        clock.now += 0.5
        assert lim.on_message(one_s, clock.now) is None
    err = lim.on_message(one_s, clock.now)
    assert err is not None
    assert err.code == "rate_limited"


def test_text_and_ping_id_limits_are_not_fatal() -> None:
    clock = Clock()
    lim = limiter(clock, max_text_chars=5, max_ping_id_chars=4)
    assert lim.on_message(m.Say("12345"), clock.now) is None
    too_long = lim.on_message(m.Text("123456"), clock.now)
    assert too_long is not None
    assert (too_long.code, too_long.fatal) == ("too_long", False)
    assert lim.on_message(m.Input(data="123456", stage="llm"), clock.now) is not None
    ping = lim.on_message(m.Ping(id="abcde"), clock.now)
    assert ping is not None
    assert ping.code == "bad_field"
    assert lim.on_message(m.Ping(id=123456789), clock.now) is None


def test_idle_and_max_duration_deadlines() -> None:
    clock = Clock()
    lim = limiter(clock, idle_timeout_s=10, max_session_s=25)
    assert lim.deadline() == 1010.0
    clock.now = 1009.0
    assert lim.expired(clock.now) is None
    lim.on_frame(clock.now)  # activity moves the idle deadline
    assert lim.deadline() == 1019.0
    clock.now = 1019.0
    err = lim.expired(clock.now)
    assert err is not None
    assert err.code == "idle_timeout"
    lim.on_frame(clock.now)
    clock.now = 1025.0
    err = lim.expired(clock.now)
    assert err is not None
    assert err.code == "max_duration"


def test_idle_waits_while_busy() -> None:
    clock = Clock()
    lim = limiter(clock, busy=True, idle_timeout_s=10, max_session_s=None)
    clock.now = 1011.0
    assert lim.expired(clock.now) is None  # a turn is in progress: looked at again later
    assert lim.deadline() == 1021.0


def test_everything_off() -> None:
    clock = Clock()
    off: dict[str, object] = {"messages_per_s": None, "audio_max_realtime": None, "max_text_chars": None}
    lim = limiter(clock, False, idle_timeout_s=None, max_session_s=None, **off)
    assert lim.deadline() is None
    for _ in range(10_000):
        assert lim.on_frame(clock.now) is None
    assert lim.on_message(m.Audio(b"\x00" * (1 << 20)), clock.now) is None
    assert lim.on_message(m.Text("x" * 100_000), clock.now) is None


# ---------------------------------------------------------------- input: charged by the target stage (issue 13 #3)

GRAPH = [("vad", "audio"), ("asr", "speech"), ("llm", "text"), ("tts", "text")]


def graph_limiter(clock: Clock, **options: object) -> SessionLimiter:
    return SessionLimiter(
        LimitOptions(**options),  # type: ignore[arg-type]
        in_rate_hz=16000,
        max_frame_bytes=16000,  # half a second of audio: the burst below is the configured 1 s
        now=clock.now,
        entries=GRAPH,
    )


def test_bytes_input_to_a_text_stage_obeys_the_text_limit() -> None:
    clock = Clock()
    lim = graph_limiter(clock, max_text_chars=5)
    for target in ({"stage": "llm"}, {"stage": "tts"}, {"entry": 2}, {"entry": 3}):
        err = lim.on_message(m.Input(data=b"123456", **target), clock.now)
        assert err is not None, target
        assert (err.code, err.fatal) == ("too_long", False)
        assert lim.on_message(m.Input(data=b"12345", **target), clock.now) is None
    # characters are counted, not bytes
    assert lim.on_message(m.Input(data="ééééé".encode(), stage="llm"), clock.now) is None


def test_input_to_an_audio_stage_spends_the_audio_budget_whatever_its_framing() -> None:
    clock = Clock()
    lim = graph_limiter(clock, audio_max_realtime=2.0, audio_burst_s=1.0, max_text_chars=10)
    b64_half_s = base64.b64encode(b"\x00" * 16000).decode()  # JSON carries audio as base64 text
    assert lim.on_message(m.Input(data=b64_half_s, stage="vad"), clock.now) is None  # not text: no too_long
    assert lim.on_message(m.Input(data=b"\x00" * 16000, entry=1), clock.now) is None  # the 1 s burst is spent
    err = lim.on_message(m.Input(data=b64_half_s, stage="asr"), clock.now)
    assert err is not None
    assert (err.code, err.fatal) == ("rate_limited", True)

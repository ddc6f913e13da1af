"""server/playhead.py on a fake clock: pacing with a lead, the clock's slack, the track's frames, the timeline."""

from __future__ import annotations

import pytest

from server.playhead import CLOCK_SLACK_S, KEEP_ENDED_TURNS, MAX_FRAME_LATE_S, Playhead, Released, TurnAudio
from stages.items import AudioChunk

RATE = 16000
CHUNK_20MS = b"\x01\x00" * 320


def chunk(turn: int = 1, ms: int = 20, text: str | None = None, text_ms: float = 0.0) -> AudioChunk:
    return AudioChunk(turn=turn, pcm=b"\x01\x00" * (RATE * ms // 1000), rate_hz=RATE, text=text, text_ms=text_ms)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def playhead(lead_ms: float = 0.0, live: set[int] | None = None, max_chunks: int = 64) -> Playhead:
    turns = {1, 2, 3} if live is None else live
    return Playhead(rate_hz=RATE, lead_ms=lead_ms, max_chunks=max_chunks, is_live=turns.__contains__, clock=Clock())


def release_all(head: Playhead, clock_now: float) -> tuple[list[float], list[Released]]:
    """Run the writer's loop on a simulated clock: the release times and what was released."""
    now = clock_now
    times: list[float] = []
    out: list[Released] = []
    while (wait := head.due_in(now)) is not None:
        now += wait
        released = head.release(now)
        if released is not None:
            times.append(now)
            out.append(released)
    return times, out


async def test_without_lead_chunks_leave_one_chunk_apart() -> None:
    head = playhead(lead_ms=0)
    for _ in range(10):
        await head.put("tts", chunk())
    times, out = release_all(head, 100.0)
    assert [r.seq for r in out] == list(range(10))
    assert [round(t - times[0], 6) for t in times] == [round(0.02 * i, 6) for i in range(10)]


async def test_with_a_lead_the_first_chunks_leave_at_once_then_in_real_time() -> None:
    head = playhead(lead_ms=100)
    for _ in range(10):
        await head.put("tts", chunk())
    times, _ = release_all(head, 100.0)
    assert times[:5] == [100.0] * 5  # 100 ms of lead: five 20 ms chunks ahead of playback
    assert [round(t - 100.0, 6) for t in times[5:]] == [0.02, 0.04, 0.06, 0.08, 0.1]


async def test_a_slightly_late_release_keeps_the_clock_a_real_gap_restarts_it() -> None:
    head = playhead(lead_ms=40)
    head.playing_until = 100.0 - CLOCK_SLACK_S / 2
    kept = head.playing_until
    await head.put("tts", chunk())
    released = head.release(100.0)
    assert released is not None
    assert released.play_at == kept  # not now: no drift
    assert head.playing_until == pytest.approx(kept + 0.020)
    head.playing_until = 100.0 - 0.2  # the client ran dry 200 ms ago
    await head.put("tts", chunk())
    released = head.release(100.0)
    assert released is not None
    assert released.play_at == 100.0
    assert head.playing_until == pytest.approx(100.02)


async def test_the_end_marker_follows_the_last_chunk() -> None:
    head = playhead(lead_ms=1000)
    await head.put("tts", chunk())
    await head.put_end(1)
    await head.put("tts", chunk(turn=2))
    assert head.release(100.0) is not None
    assert list(head.ended) == []
    assert head.release(100.0) is None  # the marker
    assert list(head.ended) == [1]
    released = head.release(100.0)
    assert released is not None
    assert released.turn == 2


async def test_nothing_of_a_dropped_or_dead_turn_leaves() -> None:
    live = {1, 2}
    head = playhead(lead_ms=1000, live=live)
    for turn in (1, 2, 1, 2):
        await head.put("tts", chunk(turn=turn))
    head.drop_turn(1, 100.5)
    assert head.playing_until == 100.5  # the client flushed: the clock restarts
    live.discard(2)  # turn 2 ended another way: the gate holds too
    assert head.due_in(100.5) is None
    assert head.release(100.5) is None


async def test_the_track_pulls_exact_frames_across_chunks_and_silence_when_idle() -> None:
    head = playhead()
    head.attach_track(True)
    await head.put("tts", chunk(ms=30, text="hello"))
    await head.put("tts", chunk(ms=30))
    await head.put_end(1)
    assert head.due_in(100.0) is None  # the WebSocket writer does not take audio while a track pulls
    frames = [head.pull_frame(100.0 + 0.02 * i) for i in range(4)]
    assert [len(f) for f in frames] == [640] * 4
    assert frames[1] == CHUNK_20MS  # the first chunk's last 10 ms + the second's first 10 ms
    assert frames[3] == bytes(640)  # all 60 ms were pulled: silence
    assert list(head.ended) == [1]
    line = head.timeline(1)
    assert line is not None
    assert line.released_ms == 60.0
    assert line.segments == [(0.0, "hello", 0.0)]


async def test_the_frame_clock_runs_on_and_restarts_after_a_stall() -> None:
    head = playhead()
    head.attach_track(True)
    assert head.frame_due_at(100.0) == 100.0
    head.pull_frame(100.0)
    assert head.frame_due_at(100.001) == pytest.approx(100.02)
    head.pull_frame(100.02)
    stalled = 100.04 + MAX_FRAME_LATE_S + 0.1
    assert head.frame_due_at(stalled) == stalled  # no burst of catch-up frames


async def test_a_track_that_hangs_up_mid_chunk_leaves_the_rest_to_the_writer() -> None:
    head = playhead(lead_ms=1000)
    head.attach_track(True)
    await head.put("tts", chunk(ms=30))
    head.pull_frame(100.0)
    head.attach_track(False)
    released = head.release(100.02)
    assert released is not None
    assert len(released.pcm) == RATE * 10 // 1000 * 2  # only the 10 ms the track did not take


async def test_acks_correct_played_time_and_teach_the_client_delay() -> None:
    head = playhead(lead_ms=1000)
    for _ in range(5):
        await head.put("tts", chunk())
    release_all(head, 100.0)
    assert head.played_ms(1, 100.05) == pytest.approx(50.0)  # no ack: real time since the first chunk
    head.ack(1, 30.0, 100.08)  # the client played 30 ms by 100.08: 50 ms later than predicted
    assert head.played_ms(1, 100.08) == 30.0
    assert head.client_delay_s == pytest.approx(0.05)


async def test_timelines_of_ended_turns_stay_bounded() -> None:
    live = set(range(1, 1001))
    head = playhead(lead_ms=10_000, live=live)
    for turn in range(1, 1001):
        await head.put("tts", chunk(turn=turn))
        await head.put_end(turn)
        while head.due_in(100.0) is not None:
            head.release(100.0)
    assert len(head.timelines) == KEEP_ENDED_TURNS


async def test_listeners_see_every_release_and_cut() -> None:
    head = playhead(lead_ms=1000)
    released: list[float] = []
    cuts: list[float] = []
    head.listen(on_release=lambda r: released.append(r.play_at), on_cut=cuts.append)
    await head.put("tts", chunk())
    await head.put("tts", chunk())
    release_all(head, 100.0)
    head.drop_turn(1, 100.01)
    assert released == [100.0, pytest.approx(100.02)]
    assert cuts == [100.01]


def test_spoken_text_counts_whole_clauses_and_the_played_share_of_the_current_one() -> None:
    line = TurnAudio(1, released_ms=3000.0, segments=[(0.0, "one two", 0.0), (1000.0, "three four five six", 2000.0)])
    assert line.spoken_text(0.0) == ""
    assert line.spoken_text(500.0) == "one"
    assert line.spoken_text(1000.0) == "one two"
    assert line.spoken_text(2000.0) == "one two three four"  # half of a 2000 ms clause
    assert line.spoken_text(3000.0) == "one two three four five six"


def test_spoken_text_of_a_streaming_clause_uses_the_speaking_rate_so_far() -> None:
    # first clause: 10 characters in 650 ms; the second (20 chars) is still arriving: ~1300 ms long
    line = TurnAudio(1, released_ms=1000.0, segments=[(0.0, "aaaa bbbbb", 650.0), (650.0, "cccc dddd eeee fffff", 0.0)])
    assert line.spoken_text(650.0 + 650.0) == "aaaa bbbbb cccc dddd"


def pauses_heard(head: Playhead) -> list[tuple[str, float, float]]:
    """What the pause and resume listeners hear: ("pause", at, 0) and ("resume", told_at, gap_s)."""
    heard: list[tuple[str, float, float]] = []
    head.listen(
        on_release=lambda _r: None,
        on_cut=lambda _now: None,
        on_pause=lambda at: heard.append(("pause", at, 0.0)),
        on_resume=lambda at, gap: heard.append(("resume", at, gap)),
    )
    return heard


def test_pause_listeners_hear_of_it_when_the_client_is_told() -> None:
    """The client holds when ``agent_paused`` reaches it, not when the server decided: the listeners (the echo
    canceller's reference) get the times the writer sent the messages, and nothing for a pause never told."""
    head = playhead()
    heard = pauses_heard(head)
    head.pause(100.0)
    assert heard == []
    assert head.paused_at == 100.0
    head.told_paused(100.0012)  # agent_paused left 1.2 ms after the decision
    head.told_paused(100.0015)  # the same pause told for a second agent turn: once is enough
    head.resume(100.5)
    assert heard == [("pause", 100.0012, 0.0)]
    head.told_resumed(100.5003)
    kind, at, gap = heard[1]
    assert (kind, at) == ("resume", 100.0012)
    assert gap == pytest.approx(0.4991)
    head.told_resumed(100.6)  # nothing to resume any more
    head.pause(101.0)
    head.resume(101.2)  # decided and undone before agent_paused left: the client never held anything
    head.told_paused(101.21)
    head.told_resumed(101.22)
    head.pause(102.0)
    head.told_paused(102.001)
    head.drop_turn(1, 102.2)  # interrupted during the pause: the client flushes what it held
    head.told_resumed(102.3)
    assert heard[2:] == [("pause", 102.001, 0.0)]


def test_a_pause_decided_before_the_last_resume_was_told_is_told_in_its_turn() -> None:
    """A slow socket: the writer is still sending when the agent resumes and pauses again. The client hears
    agent_resumed, then agent_paused (one per agent turn), in order; so do the listeners."""
    head = playhead()
    heard = pauses_heard(head)
    head.pause(100.0)
    head.told_paused(100.001)
    head.resume(100.4)
    head.pause(100.45)  # before agent_resumed left
    head.told_resumed(100.5)
    head.told_resumed(100.5001)  # the second agent turn's agent_resumed: that resume is told already
    head.told_paused(100.5002)
    head.told_paused(100.5003)
    head.resume(100.9)
    head.told_resumed(100.9004)
    assert [(kind, round(at, 4)) for kind, at, _gap in heard] == [
        ("pause", 100.001),
        ("resume", 100.001),
        ("pause", 100.5002),
        ("resume", 100.5002),
    ]
    assert heard[1][2] == pytest.approx(0.499)
    assert heard[3][2] == pytest.approx(0.4002)
    assert head.paused_at is None


def test_a_track_holds_at_once() -> None:
    head = playhead()
    heard: list[float] = []
    head.listen(
        on_release=lambda _r: None,
        on_cut=lambda _now: None,
        on_pause=heard.append,
        on_resume=lambda _at, gap: heard.append(gap),
    )
    head.attach_track(True)
    head.pause(100.0)
    head.resume(100.25)
    assert heard == [100.0, 0.25]

"""The pieces of resume alone: the message log (server/replay.py), tokens (server/resume_tokens.py),
the snapshot and its stores (server/state.py), memory and a real redis-server."""

from __future__ import annotations

import pytest

from server.replay import SessionLog
from server.resume_tokens import ResumeRefused, ResumeTokens, resume_secret
from server.state import MemoryStore, RedisStore, SafeStore, SessionState, StateOptions, make_store
from tests.services import redis_server
from transports import messages as m
from vocab.errors import ConfigError

SECRET = b"s" * 32


def state(session: str = "abc", **kwargs: object) -> SessionState:
    fields: dict[str, object] = {
        "session": session,
        "user": "alice",
        "system_prompt": "be brief",
        "voice": None,
        "language": "en",
        "history": [(1, "user", "hi"), (1, "assistant", "hello")],
        "last_turn": 1,
        "last_seq": 9,
        "replay": [(8, {"type": "turn_end", "turn": 1}), (9, {"type": "pong", "id": b"\x01"})],
    }
    fields.update(kwargs)
    return SessionState(**fields)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the log


def test_every_message_is_numbered_audio_and_ready_are_not_kept() -> None:
    log = SessionLog(max_messages=16)
    ready = m.Ready(session="s", graph=[], audio_in=m.AudioFormat(), audio_out=m.AudioFormat())
    stamped = [
        log.stamp(ready),
        log.stamp(m.Transcript(stage="asr", turn=1, text="hi", final=True)),
        log.stamp(m.AudioOut(stage="tts", turn=1, seq=0, data=b"\x00\x00")),
        log.stamp(m.TurnEnd(turn=1)),
        log.stamp(m.Error(code="going_away", message="bye", fatal=True)),
    ]
    assert [s.seq for s in stamped] == [1, 2, 3, 4, 5]
    kept, complete = log.since(0)
    assert [(s.seq, s.message["type"]) for s in kept] == [(2, "transcript"), (4, "turn_end")]
    assert complete
    assert log.since(2)[0][0].seq == 4


def test_the_tail_is_bounded_and_says_when_it_no_longer_reaches_back() -> None:
    log = SessionLog(max_messages=16)
    for i in range(40):
        log.stamp(m.Pong(id=i))
    kept, complete = log.since(10)
    assert len(kept) == 16
    assert not complete  # messages 11..24 are gone
    assert log.since(24) == (kept, True)


# ---------------------------------------------------------------- tokens


def test_a_token_opens_its_own_session_for_its_own_user_only() -> None:
    now = [1000.0]
    tokens = ResumeTokens(SECRET, ttl_s=60, clock=lambda: now[0])
    token = tokens.issue("s1", "alice")
    tokens.check(token, session="s1", user="alice")
    with pytest.raises(ResumeRefused, match="another session"):
        tokens.check(token, session="s2", user="alice")
    with pytest.raises(ResumeRefused, match="another user"):
        tokens.check(token, session="s1", user="bob")
    now[0] += 61
    with pytest.raises(ResumeRefused, match="expired"):
        tokens.check(token, session="s1", user="alice")


@pytest.mark.parametrize("forged", ["", "x", "a.b", "eyJzIjoiczEifQ.AAAA"])
def test_forged_tokens_are_refused(forged: str) -> None:
    with pytest.raises(ResumeRefused):
        ResumeTokens(SECRET, ttl_s=60).check(forged, session="s1", user=None)


def test_a_token_signed_with_another_secret_is_refused() -> None:
    other = ResumeTokens(b"o" * 32, ttl_s=60).issue("s1", None)
    with pytest.raises(ResumeRefused, match="signature"):
        ResumeTokens(SECRET, ttl_s=60).check(other, session="s1", user=None)


def test_the_shared_secret_comes_from_the_environment_or_is_made_per_process() -> None:
    assert resume_secret("X", {"X": "k" * 32}) == (b"k" * 32, True)
    made, shared = resume_secret("X", {})
    assert len(made) == 32
    assert not shared
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        resume_secret("X", {"X": "short"})


# ---------------------------------------------------------------- snapshots and stores


def test_a_snapshot_round_trips() -> None:
    original = state()
    assert SessionState.unpack(original.pack()) == original


async def test_the_memory_store_keeps_a_snapshot_for_its_ttl_and_is_bounded() -> None:
    now = [0.0]
    store = MemoryStore(max_sessions=2, clock=lambda: now[0])
    await store.save(state("a"), ttl_s=10)
    assert await store.load("a") == state("a")
    now[0] = 11.0
    assert await store.load("a") is None
    for name in "bcd":
        await store.save(state(name), ttl_s=100)
    assert await store.load("b") is None  # the oldest went first
    assert await store.load("d") == state("d")


async def test_redis_store_against_a_real_redis_server() -> None:
    async with redis_server() as url:
        store = make_store(StateOptions(backend="redis"), {"VOXPIPE_REDIS_URL": url})
        assert isinstance(store, RedisStore)
        try:
            await store.save(state("r1"), ttl_s=30)
            assert await store.load("r1") == state("r1")
            assert await store.client.pttl("voxpipe:session:r1") > 29_000
            await store.delete("r1")
            assert await store.load("r1") is None
        finally:
            await store.aclose()


async def test_a_store_that_is_down_costs_the_resume_not_the_session() -> None:
    store = SafeStore(RedisStore("redis://127.0.0.1:1/0", key_prefix="x:", timeout_s=0.2), timeout_s=0.5)
    assert await store.save(state(), ttl_s=5) is False
    assert await store.load("abc") == (None, False)
    await store.aclose()


def test_redis_without_its_url_is_a_start_up_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"state.url_env: environment variable VOXPIPE_REDIS_URL is not set"):
        make_store(StateOptions(backend="redis"), {})

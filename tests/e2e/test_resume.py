"""Resume after a lost socket, through the real server (one process, memory store): the wire contract's
"Resume" section, its failures, and what ends a session for good."""

from __future__ import annotations

import time
from typing import Any

import pytest

from server.resume_tokens import ResumeTokens
from tests.client import Client, Message, running_server, test_config
from tests.waiting import wait_until

SPEAKING = [
    {"name": "llm", "engine": "echo", "delay_ms": 1},
    {"name": "tts", "engine": "tone", "word_ms": 100, "gap_ms": 0},
]
SECRET = "r" * 32


def plain(msg: Message) -> Message:
    return {k: v for k, v in msg.items() if k not in ("_at", "_seq")}


def resume_hello(c: Client, last_seq: int) -> dict[str, Any]:
    return {"resume": {"session": c.ready["session"], "token": c.ready["resume_token"], "last_session_seq": last_seq}}


async def replay_of(r: Client) -> list[Message]:
    """The replayed messages: those numbered before this ``ready`` (a ping's pong marks their end)."""
    await r.send({"type": "ping", "id": "end-of-replay"})
    got = await r.recv_until(lambda x: x.get("id") == "end-of-replay")
    return [x for x in got if x["_seq"] < r.ready["_seq"]]


async def test_a_dropped_socket_mid_turn_resumes_with_what_it_missed_once_and_in_order() -> None:
    async with running_server(test_config(pipeline=SPEAKING)) as srv:
        async with Client.connect(srv.url) as c:
            assert c.ready["resumed"] is False
            assert c.ready["resume_token"]
            await c.send({"type": "text", "text": "one two"})
            await c.turn()
            await c.send({"type": "text", "text": " ".join(f"w{i}" for i in range(30))})  # 3.5 s of speech
            for _ in range(20):  # 400 ms of audio received
                await c.recv_type("audio")
            turn = c.received[-1]["turn"]
            await c.send({"type": "played", "turn": turn, "ms": 300})  # "You said: w0" has played
            seen = [x for x in c.received if x.get("turn") == turn and x["type"] != "audio"]
            pretend = seen[2]["_seq"]  # say the client lost what came after its third message of the turn
            c.ws.transport.abort()  # TCP reset: no close frame, no bye
        session_id = c.ready["session"]
        await wait_until(lambda: session_id not in srv.sessions)  # held: cut at what was played, snapshot kept
        async with Client.connect(f"{srv.url}?session={session_id}", hello=resume_hello(c, pretend)) as r:
            assert (r.ready["session"], r.ready["resumed"]) == (session_id, True)
            assert r.ready["_seq"] > c.last_seq  # numbering goes on across the reconnect
            replayed = await replay_of(r)
            seqs = [x["_seq"] for x in replayed]
            assert seqs == sorted(set(seqs))  # in order, once each
            assert all(pretend < n < r.ready["_seq"] for n in seqs)
            assert all(x["type"] != "audio" for x in replayed)  # no audio of the cut turn
            received_after = [plain(x) for x in c.received if x["_seq"] > pretend and x["type"] != "audio"]
            assert [plain(x) for x in replayed[: len(received_after)]] == received_after  # the same messages again
            cut = [x for x in replayed if x["type"] == "interrupted"]
            assert len(cut) == 1
            assert cut[0]["turn"] == turn
            assert cut[0]["played_ms"] == 300
            assert cut[0]["text"] == "You said: w0"
            # the conversation goes on with its history: user, agent, user, agent cut to what was played
            await r.send({"type": "text", "text": "again"})
            reply = "".join(x["text"] for x in await r.turn() if x["type"] == "reply")
            assert reply == "You said: again. I remember 4 messages."
            resumed = srv.sessions[session_id]
            assert resumed.history.messages()[3] == {"role": "assistant", "content": "You said: w0"}


async def test_a_resume_while_the_old_socket_is_still_open_takes_it_over() -> None:
    async with running_server(test_config(pipeline=SPEAKING)) as srv, Client.connect(srv.url) as old:
        await old.send({"type": "text", "text": "remember me"})
        await old.turn()
        async with Client.connect(srv.url, hello=resume_hello(old, old.last_seq or 0)) as r:
            assert r.ready["resumed"] is True
            assert r.ready["session"] == old.ready["session"]
            await r.send({"type": "text", "text": "still you"})
            reply = "".join(x["text"] for x in await r.turn() if x["type"] == "reply")
            assert reply.endswith("I remember 2 messages.")
        assert old.ws.close_code == 4000


def fresh_session_after(r: Client, old: Client) -> None:
    errors = [x for x in r.received if x["type"] == "error"]
    assert [(e["code"], e["fatal"]) for e in errors] == [("resume_failed", False)]
    assert r.received[0]["type"] == "error"  # said before the new session's ready
    assert r.ready["resumed"] is False
    assert r.ready["session"] != old.ready["session"]


@pytest.mark.parametrize("forge", ["garbage", "other-session", "expired"])
async def test_a_bad_token_gets_resume_failed_and_a_fresh_session(forge: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXPIPE_RESUME_SECRET", SECRET)
    async with running_server(test_config(pipeline=SPEAKING)) as srv, Client.connect(srv.url) as old:
        await old.send({"type": "text", "text": "my secret plans"})
        await old.turn()
        hello = resume_hello(old, 0)
        if forge == "garbage":
            hello["resume"]["token"] = "not-a-token"
        elif forge == "other-session":
            async with Client.connect(srv.url) as other:
                hello["resume"]["token"] = other.ready["resume_token"]
        else:
            past = ResumeTokens(SECRET.encode(), ttl_s=60, clock=lambda: 0.0)  # issued in 1970
            hello["resume"]["token"] = past.issue(old.ready["session"], None)
        async with Client.connect(srv.url, hello=hello) as r:
            fresh_session_after(r, old)
            await r.send({"type": "text", "text": "hi"})
            reply = "".join(x["text"] for x in await r.turn() if x["type"] == "reply")
            assert reply.endswith("I remember 0 messages.")  # never the other conversation


async def test_another_users_token_never_opens_the_conversation() -> None:
    tokens = {"a" * 16: "alice", "b" * 16: "bob"}
    config = test_config(pipeline=SPEAKING, auth={"mode": "tokens", "tokens": tokens})
    async with running_server(config) as srv:
        async with Client.connect(srv.url, hello={"token": "a" * 16}) as alice:
            await alice.send({"type": "text", "text": "alice only"})
            await alice.turn()
            alice.ws.transport.abort()
        await wait_until(lambda: alice.ready["session"] not in srv.sessions)
        hello = {"token": "b" * 16, **resume_hello(alice, 0)}  # bob holds alice's resume token
        async with Client.connect(srv.url, hello=hello) as bob:
            fresh_session_after(bob, alice)


async def test_bye_ends_the_session_for_good() -> None:
    async with running_server(test_config(pipeline=SPEAKING)) as srv:
        async with Client.connect(srv.url) as c:
            await c.send({"type": "bye"})
            await wait_until(lambda: c.ws.close_code is not None)
        await wait_until(lambda: not srv.sessions)
        async with Client.connect(srv.url, hello=resume_hello(c, 0)) as r:
            fresh_session_after(r, c)


async def test_a_session_past_its_grace_is_gone() -> None:
    config = test_config(pipeline=SPEAKING, session={"resume_grace_s": 30})
    async with running_server(config) as srv:
        store = srv.resumes.store.store
        now = [time.monotonic()]
        store.clock = lambda: now[0]  # the memory store's clock, moved by the test
        async with Client.connect(srv.url) as c:
            c.ws.transport.abort()
        await wait_until(lambda: c.ready["session"] not in srv.sessions)
        assert await store.load(c.ready["session"]) is not None  # held
        now[0] += 31.0
        async with Client.connect(srv.url, hello=resume_hello(c, 0)) as r:
            fresh_session_after(r, c)


async def test_resume_off_says_so() -> None:
    async with running_server(test_config(pipeline=SPEAKING, session={"resume_grace_s": None})) as srv:
        async with Client.connect(srv.url) as c:
            assert "resume_token" not in c.ready
            hello = {"resume": {"session": c.ready["session"], "token": "x", "last_session_seq": 0}}
        async with Client.connect(srv.url, hello=hello) as r:
            fresh_session_after(r, c)

"""server/session.py through the real server and a real socket: turns, entry points, barge-in, history."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.client import Client, running_server, silence, test_config, tone
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio

FRAMINGS = ["msgpack", "json"]


def of_turn(msgs: list[dict[str, Any]], turn: int) -> list[dict[str, Any]]:
    return [x for x in msgs if x.get("turn") == turn]


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_text_streams_reply_audio_then_turn_end(framing: str) -> None:
    async with running_server() as srv, Client.connect(srv.url, framing=framing) as c:
        assert [n["name"] for n in c.ready["graph"]] == ["vad", "asr", "llm", "tts"]
        assert c.ready["graph"][2] == {"name": "llm", "engine": "echo", "in": "text", "out": "text"}
        await c.send({"type": "text", "text": "hello there"})
        msgs = await c.turn()
        turn = msgs[0]["turn"]
        kinds = [x["type"] for x in msgs]
        assert kinds[-2:] == ["metrics", "turn_end"]
        replies = [x for x in msgs if x["type"] == "reply"]
        assert all(x["stage"] == "llm" and x["turn"] == turn for x in replies)
        assert "".join(x["text"] for x in replies) == "You said: hello there. I remember 0 messages."
        assert replies[-1]["final"] is True
        assert replies[-1]["text"] == ""
        audio = [x for x in msgs if x["type"] == "audio"]
        assert [x["seq"] for x in audio] == list(range(len(audio)))
        assert all(x["stage"] == "tts" and isinstance(x["data"], bytes) for x in audio)
        # 8 words x 100 ms tones at 16 kHz, cut in 20 ms chunks
        assert sum(len(x["data"]) for x in audio) == 8 * 1600 * 2
        metrics = msgs[-2]
        assert set(metrics["first_output_ms"]) == {"llm", "tts"}
        assert "voice_to_voice_ms" not in metrics  # the turn did not begin from speech


async def test_turn_ids_increase_and_history_grows() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        await c.send({"type": "text", "text": "one"})
        first = await c.turn()
        await c.send({"type": "text", "text": "two"})
        second = await c.turn()
        assert second[-1]["turn"] > first[-1]["turn"]
        text = "".join(x["text"] for x in second if x["type"] == "reply")
        assert text.endswith("I remember 2 messages.")  # user one, agent one; then user two


async def test_say_skips_the_llm() -> None:
    async with running_server() as srv, Client.connect(srv.url, framing="json") as c:
        await c.send({"type": "say", "text": "just these three"})
        msgs = await c.turn()
        assert {x["type"] for x in msgs} == {"audio", "metrics", "turn_end"}
        assert sum(len(x["data"]) for x in msgs if x["type"] == "audio") == 3 * 1600 * 2


@pytest.mark.parametrize("framing", FRAMINGS)
async def test_spoken_audio_goes_through_every_stage(framing: str) -> None:
    async with running_server() as srv, Client.connect(srv.url, framing=framing) as c:
        await c.stream_audio(silence(100) + tone(600) + silence(300))
        msgs = await c.turn()
        kinds = [x["type"] for x in msgs]
        assert kinds[:2] == ["vad", "vad"]
        assert [x["event"] for x in msgs[:2]] == ["speech_start", "speech_end"]
        turn = msgs[0]["turn"]
        assert all(x.get("turn") == turn for x in msgs)
        finals = [x for x in msgs if x["type"] == "transcript" and x["final"]]
        assert len(finals) == 1
        assert finals[0]["stage"] == "asr"
        assert finals[0]["text"].startswith("heard ")
        assert "decibels" in finals[0]["text"]
        reply = "".join(x["text"] for x in msgs if x["type"] == "reply")
        assert reply.startswith("You said: heard")
        assert any(x["type"] == "audio" for x in msgs)
        metrics = msgs[-2]
        assert set(metrics["first_output_ms"]) == {"vad", "asr", "llm", "tts"}
        assert metrics["voice_to_voice_ms"] >= metrics["first_output_ms"]["tts"] > 0


async def test_commit_ends_the_utterance_without_waiting_for_silence() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        await c.stream_audio(tone(400))
        await c.send({"type": "commit"})
        msgs = await c.recv_until(lambda x: x["type"] == "transcript" and x["final"], timeout=3)
        assert [x["event"] for x in msgs if x["type"] == "vad"] == ["speech_start", "speech_end"]
        assert msgs[-1]["text"].startswith("heard 4")  # ~400 ms, no trailing silence waited for


async def test_input_enters_any_stage_by_name_or_index() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        await c.send({"type": "input", "stage": "llm", "data": "via input"})
        msgs = await c.turn()
        assert "via input" in "".join(x["text"] for x in msgs if x["type"] == "reply")
        await c.send({"type": "input", "entry": 3, "data": "tts only"})
        msgs = await c.turn()
        assert not [x for x in msgs if x["type"] == "reply"]
        assert sum(len(x["data"]) for x in msgs if x["type"] == "audio") == 2 * 1600 * 2
        # audio straight into the ASR stage, ended by commit
        await c.send({"type": "input", "stage": "asr", "data": tone(500)})
        await c.send({"type": "commit"})
        msgs = await c.turn()
        transcript = [x for x in msgs if x["type"] == "transcript" and x["final"]]
        assert transcript[0]["text"].startswith("heard 500 milliseconds")


@pytest.mark.parametrize(
    ("msg", "code"),
    [
        ({"type": "input", "stage": "nope", "data": "x"}, "unknown_stage"),
        ({"type": "input", "entry": 9, "data": "x"}, "unknown_stage"),
        ({"type": "input", "data": "x"}, "bad_field"),
        ({"type": "audio", "data": b"\x01\x02\x03"}, "bad_audio"),
        ({"type": "audio", "data": b""}, "bad_audio"),
        ({"type": "text", "text": "   "}, "bad_field"),
        ({"type": "played", "turn": 1, "ms": -5}, "bad_field"),
        ({"type": "hello", "protocol": 1}, "duplicate_hello"),
        ({"type": "warp"}, "unknown_type"),
        ({"type": "text", "text": 42}, "bad_field"),
    ],
)
async def test_bad_messages_get_nonfatal_errors_and_the_session_goes_on(msg: dict[str, Any], code: str) -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        await c.send(msg)
        err = await c.recv_type("error")
        assert err["code"] == code
        assert err["fatal"] is False
        assert err["message"]
        await c.send({"type": "ping", "id": "still-there"})
        assert (await c.recv_type("pong"))["id"] == "still-there"


async def test_interrupt_stops_the_turn_and_nothing_of_it_follows() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        await c.send({"type": "say", "text": " ".join(["word"] * 30)})  # 3 s of audio
        first = await c.recv_type("audio")
        turn = first["turn"]
        for _ in range(15):  # the user hears 300 ms of it (lead_ms 200: at least 100 ms have played)
            await c.recv_type("audio")
        await c.send({"type": "interrupt"})
        msgs = await c.recv_until(lambda x: x["type"] == "interrupted")
        cut = msgs[-1]
        assert cut["turn"] == turn
        assert 0 < cut["played_ms"] < 1500
        assert 0 < len(cut["text"].split()) < 30
        later = await c.quiet(1.0)
        assert of_turn(later, turn) == []
        # a new turn starts cleanly afterwards
        await c.send({"type": "text", "text": "again"})
        msgs = await c.turn()
        assert msgs[-1]["type"] == "turn_end"
        assert msgs[-1]["turn"] > turn


async def test_history_keeps_only_what_was_played() -> None:
    config = test_config(
        pipeline=[
            {"name": "llm", "engine": "echo", "delay_ms": 1},
            {"name": "tts", "engine": "tone", "word_ms": 100, "gap_ms": 0},
        ]
    )
    async with running_server(config) as srv, Client.connect(srv.url) as c:
        await c.send({"type": "text", "text": " ".join(f"w{i}" for i in range(40))})
        audio = await c.recv_type("audio")
        for _ in range(24):  # 500 ms of audio received
            await c.recv_type("audio")
        await c.send({"type": "played", "turn": audio["turn"], "ms": 450})  # the client heard 4.5 words
        await c.send({"type": "interrupt"})
        cut = await c.recv_type("interrupted")
        assert cut["played_ms"] == 450
        assert cut["text"] == "You said: w0 w1"
        session = next(iter(srv.sessions.values()))
        assert session.history.messages()[-1] == {"role": "assistant", "content": "You said: w0 w1"}
        assert session.history.messages()[0]["role"] == "user"


async def test_voice_over_the_agent_barges_in() -> None:
    async with running_server() as srv, Client.connect(srv.url) as c:
        await c.send({"type": "say", "text": " ".join(["long"] * 40)})
        first = await c.recv_type("audio")
        await c.stream_audio(tone(400), realtime=2.0)
        msgs = await c.recv_until(lambda x: x["type"] == "interrupted", timeout=3)
        assert msgs[-1]["turn"] == first["turn"]
        assert any(x["type"] == "vad" and x["event"] == "speech_start" for x in msgs)
        later = await c.quiet(0.6)
        assert of_turn(later, first["turn"]) == []
        # the user's own utterance becomes the next turn
        await c.stream_audio(silence(300))
        msgs = later + await c.turn()
        assert any(x["type"] == "transcript" and x["final"] for x in msgs)


async def test_short_noise_blip_does_not_barge_in() -> None:
    async with (
        running_server(test_config(session={"barge_in_min_ms": 250})) as srv,
        Client.connect(srv.url) as c,
    ):
        await c.send({"type": "say", "text": "a b c d e f g h"})
        await c.recv_type("audio")
        await c.stream_audio(tone(120) + silence(300), realtime=4.0)
        msgs = await c.turn()
        assert msgs[-1]["type"] == "turn_end"


async def test_audio_is_paced_to_real_time_with_a_small_lead() -> None:
    async with running_server(test_config(session={"lead_ms": 200})) as srv, Client.connect(srv.url) as c:
        await c.send({"type": "say", "text": " ".join(["x"] * 10)})  # 1.0 s of audio
        msgs = await c.turn()
        audio = [x for x in msgs if x["type"] == "audio"]
        spread_s = audio[-1]["_at"] - audio[0]["_at"]
        assert 0.65 <= spread_s <= 1.5  # 1.0 s of audio minus at most the 200 ms lead


async def test_subscribe_filters_stage_outputs() -> None:
    async with running_server() as srv, Client.connect(srv.url, hello={"subscribe": ["llm"]}) as c:
        await c.send({"type": "text", "text": "hi"})
        msgs = await c.turn()
        assert {x["type"] for x in msgs} == {"reply", "metrics", "turn_end"}


async def test_two_sessions_do_not_see_each_other() -> None:
    async with running_server() as srv, Client.connect(srv.url) as a, Client.connect(srv.url) as b:
        assert a.ready["session"] != b.ready["session"]
        await a.send({"type": "text", "text": "alpha"})
        await b.send({"type": "text", "text": "bravo"})
        ma, mb = await asyncio.gather(a.turn(), b.turn())
        ta = "".join(x["text"] for x in ma if x["type"] == "reply")
        tb = "".join(x["text"] for x in mb if x["type"] == "reply")
        assert "alpha" in ta
        assert "bravo" not in ta
        assert "bravo" in tb
        assert "alpha" not in tb


def session_tasks() -> list[asyncio.Task[Any]]:
    me = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not me and not t.done() and ":" in t.get_name()]


async def test_connect_talk_close_cycles_leave_no_tasks() -> None:
    async with running_server() as srv:
        for i in range(50):
            async with Client.connect(srv.url, framing=FRAMINGS[i % 2]) as c:
                await c.send({"type": "say", "text": "hi there"})
                await c.recv_type("audio")
        await wait_until(lambda: not srv.sessions and not session_tasks())
        assert srv.sessions == {}
        assert session_tasks() == []


async def test_client_vanishing_mid_turn_ends_all_its_tasks() -> None:
    async with running_server() as srv:
        async with Client.connect(srv.url) as c:
            await c.send({"type": "say", "text": " ".join(["z"] * 50)})
            await c.recv_type("audio")
            assert session_tasks()
            c.ws.transport.abort()  # TCP reset, no close frame
        await wait_until(lambda: not session_tasks())
        assert session_tasks() == []
        assert srv.sessions == {}

"""server/barge_in.py: voice over the agent pauses it and the words decide, through the real server.

The test ASR "says" ``short_text`` for audio shorter than ``short_ms`` (a backchannel, or nothing for a
cough) and real words for longer audio, so every branch is reached with tones.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from server.barge_in import is_echo, verdict, words_of
from tests.client import Client, Message, running_server, silence, test_config, tone

BACKCHANNELS = frozenset({("yeah",), ("uh", "huh"), ("mm", "hmm"), ("okay",)})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yeah.", "backchannel"),
        ("Uh-huh", "backchannel"),
        ("Mm-hmm, yeah.", "backchannel"),
        ("okay okay", "backchannel"),
        ("", "nothing"),
        ("(coughs)", "nothing"),
        ("[laughter] *sigh*", "nothing"),
        ("Yeah, but wait.", "words"),
        ("Stop.", "words"),
        ("Okay what about Tuesday?", "words"),
        ("Mmm.", "backchannel"),  # hums: no vowel, not a word
        ("NMR.", "backchannel"),  # what tiny Whisper made of a "mm-hmm"
        ("Hmm, yeah.", "backchannel"),
        ("Turn off the TV.", "words"),
        ("MMO.", "backchannel"),  # no English word starts with "mm"
        ("Ha ha.", "backchannel"),  # a laugh
        ("Aha!", "backchannel"),
        ("He said hi.", "words"),
    ],
)
def test_the_words_decide(text: str, expected: str) -> None:
    assert verdict(text, BACKCHANNELS) == expected


def test_words_of_ignores_case_punctuation_and_non_speech() -> None:
    assert words_of("Uh-huh, (laughs) I SEE.") == ["uh", "huh", "i", "see"]


def test_heard_words_mostly_among_the_agent_s_last_words_are_its_echo() -> None:
    agent = words_of("Welcome, traveller. The smithy is past the well.")
    assert is_echo(words_of("the smithy is past"), agent)
    assert is_echo(words_of("The smith is past the wall."), agent)  # misheard, clipped: still the echo
    assert not is_echo(words_of("Hold on, I need to ask you about the quest."), agent)
    assert not is_echo(words_of("Wait."), agent)
    assert not is_echo([], agent)
    assert not is_echo(words_of("the well"), [])


def words_config(short_text: str = "yeah", **session: Any) -> dict[str, Any]:
    return test_config(
        pipeline=[
            {"name": "vad", "engine": "energy", "start_ms": 60, "end_ms": 200},
            {"name": "asr", "engine": "duration_asr", "short_ms": 400, "short_text": short_text},
            {"name": "llm", "engine": "echo", "delay_ms": 5},
            {"name": "tts", "engine": "tone", "word_ms": 100, "gap_ms": 0},
        ],
        session={"barge_in": "words", "barge_in_window_ms": 400, **session},
    )


def without_client_aec(short_text: str) -> dict[str, Any]:
    """``words_config`` with the server's canceller and guard off: what the words decide, alone."""
    return {**words_config(short_text), "echo_canceller": {"enabled": False}, "echo_guard": {"enabled": False}}


def hello_aec(aec: bool) -> dict[str, Any]:
    return {"audio_in": {"format": "pcm16", "rate": 16000, "channels": 1, "aec": aec}}


async def short_voice_over_the_agent(c: Client) -> tuple[int, list[str]]:
    """200 ms of voice over the agent, then silence, until its turn ends either way: (turn, its message types)."""
    agent = await agent_speaking(c)
    ended = ("turn_end", "interrupted")
    msgs = await talk_over(c, tone(200) + silence(1500), lambda x: x["turn"] == agent and x["type"] in ended)
    return agent, of_turn(msgs, agent)


async def agent_speaking(c: Client) -> int:
    await c.send({"type": "say", "text": " ".join(["word"] * 40)})  # 4 s of agent speech
    first = await c.recv_type("audio")
    for _ in range(30):  # 600 ms of it sent: 400 ms or so played (lead_ms 200)
        await c.recv_type("audio")
    turn: int = first["turn"]
    return turn


async def talk_over(c: Client, pcm: bytes, until: Any, timeout: float = 15.0) -> list[Message]:
    """Stream ``pcm`` in real time while reading (so arrival times are true), until ``until(msg)``."""
    talking = asyncio.create_task(c.stream_audio(pcm, realtime=1.0))
    try:
        return await c.recv_until(until, timeout=timeout)
    finally:
        await talking


def of_turn(msgs: list[Message], turn: int) -> list[str]:
    return [x["type"] for x in msgs if x.get("turn") == turn]


@pytest.mark.parametrize(("said", "short_text"), [("a backchannel", "yeah"), ("a cough", "")])
async def test_a_backchannel_or_a_cough_pauses_the_agent_then_it_goes_on(said: str, short_text: str) -> None:
    async with running_server(words_config(short_text)) as srv, Client.connect(srv.url) as c:
        agent = await agent_speaking(c)
        voice = tone(200) + silence(1500)  # 200 ms of voice over the agent, then the mic goes on
        msgs = await talk_over(c, voice, lambda x: x["type"] == "turn_end" and x["turn"] == agent)
        kinds = of_turn(msgs, agent)
        assert "agent_paused" in kinds
        assert "agent_resumed" in kinds
        assert kinds.index("agent_paused") < kinds.index("agent_resumed")
        assert "interrupted" not in kinds
        assert kinds[-1] == "turn_end"
        # all of the agent's audio came through: nothing was cut
        audio = [x for x in c.received if x["type"] == "audio" and x["turn"] == agent]
        assert sum(len(x["data"]) for x in audio) == 40 * 1600 * 2
        user = next(x["turn"] for x in c.received if x["type"] == "vad" and x["turn"] != agent)
        user_kinds = [x["type"] for x in c.received if x.get("turn") == user]
        assert "reply" not in user_kinds, f"{said} must not be answered"
        assert user_kinds[-1] == "turn_end"
        session = next(iter(srv.sessions.values()))
        assert [m["role"] for m in session.history.messages()] == ["assistant"]  # the say; no "yeah" turn


@pytest.mark.parametrize(
    ("logprob", "aec", "cut"),
    [(-1.1, True, False), (-0.9, True, True), (-0.9, False, False), (-0.3, False, True), (None, True, True)],
)
async def test_words_the_asr_was_unsure_of_do_not_cut_the_agent(logprob: float | None, aec: bool, cut: bool) -> None:
    # tiny Whisper's reading of a "mm-hmm" (bench/turn_taking.py): words, but at a low log-probability; a
    # client with no echo cancellation (its mic carries the agent's residual echo) gets a stricter bar
    config = without_client_aec("in a month")
    config["pipeline"][1]["short_logprob"] = logprob
    async with running_server(config) as srv, Client.connect(srv.url, hello=hello_aec(aec)) as c:
        agent, kinds = await short_voice_over_the_agent(c)

        def user_final(x: Message) -> bool:
            return bool(x["type"] == "transcript" and x["turn"] != agent and x["final"])

        if not any(map(user_final, c.received)):  # the cut is queued before the transcript that decided it
            await c.recv_until(user_final, timeout=10)
        heard = [x["text"] for x in c.received if x["type"] == "transcript" and x["turn"] != agent]
        assert "in a month" in heard, heard
        assert kinds[-1] == ("interrupted" if cut else "turn_end"), kinds
        assert ("agent_resumed" in kinds) is not cut


async def test_words_in_the_first_partial_alone_do_not_cut_the_agent() -> None:
    # the first partial hears "bye" in the pre-roll and a breath of voice; the whole "yeah" then resumes
    config = words_config("yeah")
    config["pipeline"][1].update(early_ms=400, early_text="bye")
    async with running_server(config) as srv, Client.connect(srv.url) as c:
        agent = await agent_speaking(c)
        msgs = await talk_over(c, tone(200) + silence(1500), lambda x: x["type"] == "turn_end" and x["turn"] == agent)
        kinds = of_turn(msgs, agent)
        heard = [x["text"] for x in c.received if x["type"] == "transcript" and x["turn"] != agent]
        assert heard[0] == "bye", heard  # the early partial was words...
        assert "interrupted" not in kinds  # ...and did not cut the agent
        assert kinds.index("agent_paused") < kinds.index("agent_resumed")


async def test_words_heard_again_in_the_next_partial_cut_the_agent_before_the_utterance_ends() -> None:
    # every partial says "wait" (the words do not change): the second one confirms the first, so the
    # agent is cut while the user is still talking, not at the final transcript
    config = words_config("wait")
    config["pipeline"][1].update(short_ms=5000)
    async with running_server(config) as srv, Client.connect(srv.url) as c:
        agent = await agent_speaking(c)
        msgs = await talk_over(c, tone(1200) + silence(400), lambda x: x["type"] == "interrupted")
        assert msgs[-1]["turn"] == agent
        user_transcripts = [x for x in msgs if x["type"] == "transcript" and x["turn"] != agent]
        assert user_transcripts, "partials came before the cut"
        assert not any(x["final"] for x in user_transcripts), "cut on a partial, before the final"
        paused = next(x for x in msgs if x["type"] == "agent_paused")
        assert msgs[-1]["_at"] - paused["_at"] < 0.9  # well before the 1.2 s of voice ended


@pytest.mark.parametrize("aec", [False, True])
async def test_the_agent_s_own_words_heard_back_do_not_cut_it_when_the_client_has_no_echo_cancellation(
    aec: bool,
) -> None:
    # the "user" says the agent's own words (its echo, as a speakerphone plays it back)
    config = without_client_aec("word word")
    async with running_server(config) as srv, Client.connect(srv.url, hello=hello_aec(aec)) as c:
        _agent, kinds = await short_voice_over_the_agent(c)
        assert "agent_paused" in kinds
        if aec:  # the client cancels its echo: these are the user's words
            assert kinds[-1] == "interrupted"
        else:
            assert kinds[-1] == "turn_end"
            assert "interrupted" not in kinds
            assert "agent_resumed" in kinds


async def test_real_words_interrupt_soon_and_get_an_answer() -> None:
    async with running_server(words_config()) as srv, Client.connect(srv.url) as c:
        agent = await agent_speaking(c)
        msgs = await talk_over(c, tone(900) + silence(400), lambda x: x["type"] == "interrupted")  # words
        paused = next(x for x in msgs if x["type"] == "agent_paused")
        cut = msgs[-1]
        assert (paused["turn"], cut["turn"]) == (agent, agent)
        assert cut["_at"] - paused["_at"] < 1.0  # the first words decided (the test ASR answers at once)
        metrics = [x for x in msgs if x["type"] == "metrics" and x["turn"] == agent]
        assert metrics, "an interrupted turn keeps its metrics"
        assert "tts" in metrics[0]["first_output_ms"]
        reply = await c.recv_until(lambda x: x["type"] == "turn_end" and x["turn"] > agent, timeout=10)
        assert any(x["type"] == "reply" for x in reply)
        session = next(iter(srv.sessions.values()))
        spoken = session.history.messages()[0]
        assert spoken["role"] == "assistant"
        assert 0 < len(spoken["content"].split()) < 40  # cut to what was played before the pause


async def test_still_talking_after_the_longest_pause_is_an_interruption() -> None:
    # backchannels the test ASR's partials are made of: the words never decide, the voice does
    config = words_config(barge_in_max_pause_ms=800, backchannels=["yeah", "hearing", "milliseconds"])
    async with running_server(config) as srv, Client.connect(srv.url) as c:
        agent = await agent_speaking(c)
        msgs = await talk_over(c, tone(1600) + silence(400), lambda x: x["type"] == "interrupted")
        paused = next(x for x in msgs if x["type"] == "agent_paused")
        assert msgs[-1]["turn"] == agent
        assert 0.7 < msgs[-1]["_at"] - paused["_at"] < 1.5  # at barge_in_max_pause_ms


async def test_a_mic_gone_quiet_mid_utterance_does_not_hold_the_agent_paused() -> None:
    # the client sends a little voice and then nothing at all: no silence frames end the utterance
    async with running_server(words_config(barge_in_max_pause_ms=800)) as srv, Client.connect(srv.url) as c:
        agent = await agent_speaking(c)
        # 120 ms of voice: the decision window (400 ms) finds no audio for ~340 ms: the mic is quiet
        msgs = await talk_over(c, tone(120), lambda x: x["type"] in ("agent_resumed", "interrupted"))
        paused = next(x for x in msgs if x["type"] == "agent_paused")
        assert msgs[-1]["type"] == "agent_resumed"
        assert 0.7 < msgs[-1]["_at"] - paused["_at"] < 1.5  # at barge_in_max_pause_ms
        user = paused["_seq"] + 1  # the vad speech_start right after the pause names the user's turn
        user_turn = next(x["turn"] for x in msgs if x.get("_seq") == user)
        await c.stream_audio(silence(400), realtime=4.0)  # the mic comes back: the utterance ends
        rest = await c.recv_until(lambda x: x["type"] == "turn_end" and x["turn"] == agent, timeout=10)
        user_kinds = [x["type"] for x in c.received if x.get("turn") == user_turn]
        assert "interrupted" not in [x["type"] for x in rest]
        assert "reply" not in user_kinds, "the late 'yeah' is judged as if the pause still held"
        if "turn_end" not in user_kinds:
            await c.recv_until(lambda x: x["type"] == "turn_end" and x["turn"] == user_turn, timeout=5)
        user_kinds = [x["type"] for x in c.received if x.get("turn") == user_turn]
        assert "reply" not in user_kinds


async def test_immediate_mode_per_session_cuts_without_a_pause() -> None:
    async with running_server(words_config()) as srv:
        async with Client.connect(srv.url, hello={"session": {"barge_in": "immediate"}}) as c:
            agent = await agent_speaking(c)
            msgs = await talk_over(c, tone(300) + silence(300), lambda x: x["type"] == "interrupted")
            assert msgs[-1]["turn"] == agent
            assert "agent_paused" not in [x["type"] for x in msgs]


async def test_voice_with_no_agent_speaking_is_just_a_turn() -> None:
    async with running_server(words_config()) as srv, Client.connect(srv.url) as c:
        await c.stream_audio(tone(600) + silence(400), realtime=4.0)
        msgs = await c.turn()
        assert "agent_paused" not in [x["type"] for x in msgs]
        assert any(x["type"] == "reply" for x in msgs)


@pytest.mark.parametrize(("aec", "voice_ms", "answered"), [(False, 200, False), (True, 200, True), (False, 600, True)])
async def test_a_voice_in_the_echo_s_tail_is_answered_only_for_real_words(
    aec: bool, voice_ms: int, answered: bool
) -> None:
    # the agent's turn is over, but its last audio still plays (and rings in the room): with no echo
    # cancellation at the client a "yeah" (its echo, most likely) then is not answered; real words are,
    # and so is anything from a client that cancels its echo
    async with running_server(without_client_aec("yeah")) as srv, Client.connect(srv.url, hello=hello_aec(aec)) as c:
        await c.send({"type": "say", "text": "word word word"})
        agent = (await c.recv_type("turn_end"))["turn"]
        msgs = await talk_over(
            c, tone(voice_ms) + silence(600), lambda x: x["type"] == "turn_end" and x["turn"] != agent
        )
        user = msgs[-1]["turn"]
        await c.quiet(0.3)
        user_kinds = [x["type"] for x in c.received if x.get("turn") == user]
        assert ("reply" in user_kinds) is answered, user_kinds
        assert "agent_paused" not in [x["type"] for x in c.received]  # nothing was left to pause


async def test_after_two_false_pauses_a_short_voice_no_longer_pauses_the_agent() -> None:
    # a client with no echo cancellation: each echo that opens a voice over the agent pauses it for
    # nothing; from the third on in one turn, a voice pauses the agent only if it lasts the window
    config = without_client_aec("")
    config["pipeline"][1]["short_ms"] = 700  # a voice's audio includes the pre-roll and the end's silence
    async with running_server(config) as srv, Client.connect(srv.url, hello=hello_aec(False)) as c:
        agent = await agent_speaking(c)
        for _ in range(2):
            await talk_over(c, tone(200) + silence(400), lambda x: x["type"] == "agent_resumed")
        start = len(c.received)
        await talk_over(c, tone(200) + silence(400), lambda x: x["type"] == "turn_end" and x["turn"] != agent)
        assert "agent_paused" not in of_turn(c.received[start:], agent)  # short: the agent went on
        start = len(c.received)
        msgs = await talk_over(
            c, tone(1500) + silence(300), lambda x: x["turn"] == agent and x["type"] == "interrupted"
        )
        paused = next(x for x in msgs if x["type"] == "agent_paused")
        voice = next(x for x in c.received[start:] if x["type"] == "vad" and x["event"] == "speech_start")
        assert paused["_at"] - voice["_at"] >= 0.35  # held once the voice lasted the 400 ms window
        assert of_turn(c.received, agent)[-1] == "interrupted"

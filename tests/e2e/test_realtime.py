"""``/v1/realtime`` through the official ``openai`` SDK (GA and beta clients) on the test stages, real socket.

The whole flow of the issue: session.created first (even with events sent before it), session.update, a
text turn, a voice turn with server VAD, response.cancel, conversation.item.truncate, an unknown event, and
the session still answering; then barge-in, manual turn detection, G.711, and the bad input the API names.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.client import running_server, silence, tone
from tests.realtime import Events, audio_of, b64, sdk_connect, types
from tests.waiting import wait_until
from transports import g711

pytestmark = pytest.mark.asyncio
RATE = 24000
DIALECTS = ["ga", "beta"]


def names(dialect: str) -> dict[str, Any]:
    if dialect == "beta":
        return {
            "added": ["conversation.item.created"],
            "text_delta": "response.text.delta",
            "text_done": "response.text.done",
            "audio_delta": "response.audio.delta",
            "audio_done": "response.audio.done",
            "transcript_delta": "response.audio_transcript.delta",
            "transcript_done": "response.audio_transcript.done",
            "item_done": [],
        }
    return {
        "added": ["conversation.item.added", "conversation.item.done"],
        "text_delta": "response.output_text.delta",
        "text_done": "response.output_text.done",
        "audio_delta": "response.output_audio.delta",
        "audio_done": "response.output_audio.done",
        "transcript_delta": "response.output_audio_transcript.delta",
        "transcript_done": "response.output_audio_transcript.done",
        "item_done": ["conversation.item.done"],
    }


def modalities(dialect: str, speak: bool) -> dict[str, Any]:
    if dialect == "beta":
        return {"modalities": ["text", "audio"] if speak else ["text"]}
    return {"type": "realtime", "output_modalities": ["audio"] if speak else ["text"]}


def user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def squeeze(kinds: list[str]) -> list[str]:
    """Runs of the same event type as one (deltas)."""
    return [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_the_whole_flow_with_the_official_sdk(dialect: str) -> None:
    n = names(dialect)
    async with running_server() as srv, sdk_connect(srv, beta=dialect == "beta") as conn:
        ev = Events(conn)
        # sent before reading anything: the server still says session.created first
        await conn.session.update(session={**modalities(dialect, False), "instructions": "Be brief."})
        created, updated = await ev.next(), await ev.next()
        assert (created.type, updated.type) == ("session.created", "session.updated")
        assert updated.session.instructions == "Be brief."
        assert created.session.id == updated.session.id
        session = srv.sessions[created.session.id.removeprefix("sess_")]
        assert session.ctx.system_prompt == "Be brief."

        # a text turn: the item joins without an answer; response.create answers it, text only
        await conn.conversation.item.create(item=user_text("hello there"))
        added = await ev.until_type(n["added"][-1])
        assert types(added) == n["added"]
        await conn.response.create()
        turn = await ev.until_type("response.done")
        assert squeeze(types(turn)) == [
            "response.created",
            "rate_limits.updated",
            "response.output_item.added",
            n["added"][0],
            "response.content_part.added",
            n["text_delta"],
            n["text_done"],
            "response.content_part.done",
            "response.output_item.done",
            *n["item_done"],
            "response.done",
        ]
        text = "".join(e.delta for e in turn if e.type == n["text_delta"])
        assert text == "You said: hello there. I remember 0 messages."
        done = turn[-1].response
        assert (done.status, done.output[0].status, done.usage.output_tokens) == ("completed", "completed", 8)

        # a voice turn with server VAD, spoken back
        await conn.session.update(session=modalities(dialect, True))
        await ev.until_type("session.updated")
        await ev.send_audio(silence(200, RATE) + tone(600, RATE) + silence(400, RATE))
        voice = await ev.until_type("response.done", timeout=15)
        kinds = types(voice)
        assert kinds[:4] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            n["added"][0],
        ]
        started, stopped = voice[0], voice[1]
        assert started.item_id == stopped.item_id == voice[2].item_id
        # voice from 200 ms, confirmed after 60 ms; 200 ms of pre-roll; 200 ms of silence ends it
        assert (started.audio_start_ms, stopped.audio_end_ms) == (60, 1000)
        heard = next(e for e in voice if e.type == "conversation.item.input_audio_transcription.completed")
        assert heard.item_id == started.item_id
        # the ASR's speculative final, decoded 120 ms into the closing silence, is the transcript
        assert heard.transcript.startswith("heard 860 milliseconds")
        if dialect == "ga":
            assert heard.usage.seconds == 0.94  # the utterance's audio
        response_id = voice[-1].response.id
        transcript = next(e for e in voice if e.type == n["transcript_done"]).transcript
        assert transcript == f"You said: {heard.transcript}. I remember 2 messages."
        pcm = audio_of(voice, response_id)
        assert len(pcm) == len(transcript.split()) * RATE // 10 * 2  # the tone TTS: 100 ms per word
        assert voice[-1].response.status == "completed"

        # response.cancel while the answer is being spoken
        await conn.conversation.item.create(item=user_text(" ".join(["word"] * 20)))
        await conn.response.create()
        first_audio = await ev.until_type(n["audio_delta"])
        long_id = first_audio[-1].response_id
        item_id = first_audio[-1].item_id
        await conn.response.cancel()
        cancelled = await ev.until_type("response.done")
        assert cancelled[-1].response.status == "cancelled"
        assert cancelled[-1].response.status_details.reason == "client_cancelled"
        assert cancelled[-1].response.output[0].status == "incomplete"
        assert n["audio_done"] in types(cancelled)
        sent_ms = len(audio_of(ev.seen, long_id)) / 48
        assert sent_ms < 600  # paced at 200 ms lead: a cancel finds little in flight (4 s were coming)

        # truncate: the client heard 100 ms of it
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=100)
        truncated = (await ev.until_type("conversation.item.truncated"))[-1]
        assert (truncated.item_id, truncated.audio_end_ms) == (item_id, 100)
        said = "".join(e.delta for e in ev.seen if e.type == n["transcript_delta"] and e.response_id == long_id)
        assert said.startswith("You said: word word")
        # the history keeps what was heard (100 ms: at most "You"), never the 22 words the LLM wrote
        answers = [e.content for e in session.history.entries() if e.role == "assistant"]
        assert not any("word" in answer for answer in answers)

        # an unknown event: an error in the API's shape, the connection stays
        await conn.send({"type": "session.dance", "event_id": "evt_1"})
        error = (await ev.until_type("error"))[-1].error
        assert (error.type, error.code, error.param, error.event_id) == (
            "invalid_request_error",
            "invalid_value",
            "type",
            "evt_1",
        )

        # still usable, and nothing of the cancelled response ever came after its response.done
        await conn.response.create(response={"instructions": "Answer."})
        again = await ev.until_type("response.done")
        assert again[-1].response.status == "completed"
        after = ev.seen[ev.seen.index(cancelled[-1]) + 1 :]
        assert not [e for e in after if getattr(e, "response_id", None) == long_id]


async def test_voice_over_the_answer_cuts_it_off_as_turn_detected() -> None:
    async with running_server() as srv, sdk_connect(srv) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        await conn.conversation.item.create(item=user_text(" ".join(["word"] * 30)))
        await conn.response.create()
        first = await ev.until_type("response.output_audio.delta")
        answer_id = first[-1].response_id
        await ev.send_audio(tone(400, RATE) + silence(400, RATE))
        cut = await ev.until(lambda e: e.type == "response.done" and e.response.id == answer_id)
        assert (cut[-1].response.status, cut[-1].response.status_details.reason) == ("cancelled", "turn_detected")
        answered = await ev.until(lambda e: e.type == "response.done" and e.response.id != answer_id, timeout=15)
        # (audio sent faster than real time: the cut may overtake speech_started, which is not urgent)
        assert "input_audio_buffer.speech_started" in types(cut + answered)
        assert answered[-1].response.status == "completed"
        assert audio_of(answered, answered[-1].response.id)
        after = ev.seen[ev.seen.index(cut[-1]) + 1 :]
        assert not [e for e in after if getattr(e, "response_id", None) == answer_id]


async def test_manual_turns_wait_for_commit_and_response_create() -> None:
    async with running_server() as srv, sdk_connect(srv) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        session_update = {"type": "realtime", "audio": {"input": {"turn_detection": None}}}
        await conn.session.update(session=session_update)
        updated = (await ev.until_type("session.updated"))[-1]
        assert updated.session.audio.input.turn_detection is None
        await ev.send_audio(tone(300, RATE) + silence(1000, RATE))  # a pause that server VAD would end on
        await conn.input_audio_buffer.commit()
        committed = await ev.until_type("conversation.item.done")
        assert types(committed) == [
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
        ]  # no speech_started/stopped with turn detection off
        heard = await ev.until_type("conversation.item.input_audio_transcription.completed")
        # all the audio is the utterance, the long pause too (the ASR decoded it speculatively in the pause)
        assert heard[-1].transcript.startswith("heard 4")
        await conn.response.create()
        turn = await ev.until_type("response.done")
        transcript = next(e for e in turn if e.type == "response.output_audio_transcript.done").transcript
        assert transcript.startswith(f"You said: {heard[-1].transcript}")
        assert "response.created" not in types(heard)  # nothing answered before response.create


async def test_g711_in_and_out() -> None:
    async with running_server() as srv, sdk_connect(srv) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        pcmu = {"type": "audio/pcmu"}
        await conn.session.update(
            session={"type": "realtime", "audio": {"input": {"format": pcmu}, "output": {"format": pcmu}}}
        )
        updated = (await ev.until_type("session.updated"))[-1]
        assert updated.session.audio.output.format.type == "audio/pcmu"
        narrow = silence(200, 8000) + tone(600, 8000) + silence(400, 8000)
        await ev.send_audio(g711.encode(narrow, "pcmu"), chunk_bytes=160)  # 20 ms at 8 kHz, one byte each
        turn = await ev.until_type("response.done", timeout=15)
        heard = next(e for e in turn if e.type == "conversation.item.input_audio_transcription.completed")
        heard_ms = int(heard.transcript.split()[1])
        assert abs(heard_ms - 860) <= 20  # as at 24 kHz PCM, give or take a VAD frame (the filters ring)
        deltas = [e for e in turn if e.type == "response.output_audio.delta"]
        assert max(len(b64_bytes(e.delta)) for e in deltas) == 160  # 20 ms of mu-law
        out = np.frombuffer(g711.decode(b"".join(b64_bytes(e.delta) for e in deltas), "pcmu"), "<i2")
        assert out.size == len(turn[-2].item.content[0].transcript.split()) * 800  # 100 ms per word at 8 kHz
        assert np.abs(out).max() > 5000


def b64_bytes(text: str) -> bytes:
    import base64

    return base64.b64decode(text)


async def test_bad_input_gets_the_apis_errors_and_the_session_goes_on() -> None:
    async with running_server() as srv, sdk_connect(srv) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")

        async def error_for(event: dict[str, Any]) -> Any:
            await conn.send(event)
            return (await ev.until_type("error"))[-1].error

        bad = await error_for({"type": "input_audio_buffer.append", "audio": "not base64!", "event_id": "e1"})
        assert (bad.code, bad.param, bad.event_id) == ("invalid_value", "audio", "e1")
        odd = await error_for({"type": "input_audio_buffer.append", "audio": b64(b"\x01\x02\x03")})
        assert (odd.code, odd.param) == ("invalid_value", "audio")
        fmt = {"type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}
        wrong = await error_for({"type": "session.update", "session": fmt})
        assert (wrong.code, wrong.param) == ("invalid_value", "session.audio.input.format.rate")
        huge = await error_for({"type": "input_audio_buffer.append", "audio": b64(bytes(10 << 20))})
        assert huge.code == "input_audio_buffer_append_too_large"
        empty = await error_for({"type": "input_audio_buffer.commit"})
        assert empty.code == "input_audio_buffer_commit_empty"
        idle = await error_for({"type": "response.cancel"})
        assert idle.code == "response_cancel_not_active"
        missing = await error_for({"type": "conversation.item.truncate", "item_id": "nope", "audio_end_ms": 1})
        assert (missing.code, missing.param) == ("item_not_found", "item_id")
        await conn.conversation.item.create(item=user_text(" ".join(["word"] * 10)))
        await conn.response.create()
        busy = await error_for({"type": "response.create", "event_id": "e2"})
        assert (busy.code, busy.event_id) == ("conversation_already_has_active_response", "e2")
        assert "Conversation already has an active response in progress: resp_" in busy.message
        done = (await ev.until_type("response.done"))[-1]
        assert done.response.status == "completed"
        await conn.conversation.item.create(item=user_text("still here"))
        await conn.response.create()
        last = await ev.until_type("response.done")
        text = "".join(e.delta for e in last if e.type == "response.output_audio_transcript.delta")
        assert text.startswith("You said: still here.")
        assert srv.sessions  # the same session all along


async def test_server_vad_without_create_response_waits_for_response_create() -> None:
    async with running_server() as srv, sdk_connect(srv) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        detection = {"type": "server_vad", "create_response": False, "interrupt_response": False}
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": detection}}})
        await ev.until_type("session.updated")
        await ev.send_audio(silence(200, RATE) + tone(600, RATE) + silence(400, RATE))
        heard = await ev.until_type("conversation.item.input_audio_transcription.completed")
        assert "input_audio_buffer.speech_stopped" in types(heard)
        assert "response.created" not in types(heard)
        session = next(iter(srv.sessions.values()))
        await wait_until(lambda: not session.turns.live)  # the user's turn ended without an answer
        assert session.history.messages()[-1]["role"] == "user"
        await conn.response.create()
        turn = await ev.until_type("response.done")
        transcript = next(e for e in turn if e.type == "response.output_audio_transcript.done").transcript
        assert transcript.startswith(f"You said: {heard[-1].transcript}")


async def test_clear_drops_the_utterance_being_spoken() -> None:
    async with running_server() as srv, sdk_connect(srv) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        await ev.send_audio(tone(400, RATE))  # speech started, not ended
        await ev.until_type("input_audio_buffer.speech_started")
        session = next(iter(srv.sessions.values()))
        assert session.turns.live
        await conn.input_audio_buffer.clear()
        await ev.until_type("input_audio_buffer.cleared")
        await wait_until(lambda: not session.turns.live)  # its turn is gone, nothing to answer
        await conn.input_audio_buffer.commit()
        assert (await ev.until_type("error"))[-1].error.code == "input_audio_buffer_commit_empty"
        await ev.send_audio(tone(600, RATE) + silence(400, RATE))  # and the next utterance is heard whole
        turn = await ev.until_type("response.done")
        heard = next(e for e in turn if e.type == "conversation.item.input_audio_transcription.completed")
        assert heard.transcript.startswith("heard ")


async def test_truncating_the_answer_being_played_cuts_it_there() -> None:
    async with running_server() as srv, sdk_connect(srv) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        await conn.conversation.item.create(item=user_text(" ".join(["word"] * 30)))
        await conn.response.create()
        first = (await ev.until_type("response.output_audio.delta"))[-1]
        await conn.conversation.item.truncate(item_id=first.item_id, content_index=0, audio_end_ms=250)
        cut = await ev.until_type("conversation.item.truncated")
        done = next(e for e in cut if e.type == "response.done")
        assert (done.response.status, done.response.status_details.reason) == ("cancelled", "client_cancelled")
        session = next(iter(srv.sessions.values()))
        answer = [e.content for e in session.history.entries() if e.role == "assistant"]
        assert answer == ["You said:"]  # 250 ms of 100 ms words: what the client heard, no more


async def test_turn_detection_settings_reach_the_vad() -> None:
    async with running_server() as srv, sdk_connect(srv) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        detection = {"type": "server_vad", "silence_duration_ms": 600, "prefix_padding_ms": 100}
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": detection}}})
        reported = (await ev.until_type("session.updated"))[-1].session.audio.input.turn_detection
        assert (reported.silence_duration_ms, reported.prefix_padding_ms) == (600, 100)
        # a 400 ms pause no longer ends the utterance (the pipeline's end_ms is 200)
        await ev.send_audio(silence(200, RATE) + tone(300, RATE) + silence(400, RATE) + tone(300, RATE))
        await ev.send_audio(silence(700, RATE))
        turn = await ev.until_type("input_audio_buffer.speech_stopped")
        assert types(turn).count("input_audio_buffer.speech_started") == 1
        # 100 ms of pre-roll before the confirming frame at 260 ms; 600 ms of silence after 1200 ms
        assert (turn[0].audio_start_ms, turn[-1].audio_end_ms) == (160, 1800)
        await ev.until_type("response.done")

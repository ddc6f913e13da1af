"""transports/realtime.py without sockets: client events -> session messages, session messages -> events."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from transports import g711
from transports import messages as m
from transports.limits import LimitOptions
from transports.realtime import RealtimeConnection, RealtimeOptions
from transports.realtime_config import RealtimeConfig, TurnDetectionConfig
from transports.realtime_vocab import BETA, GA, Event, Vocab

READY = m.Ready(session="s1", graph=[], audio_in=m.AudioFormat(rate=24000), audio_out=m.AudioFormat(rate=24000))


def opened(vocab: Vocab = GA, now: float = 0.0, **limits: Any) -> RealtimeConnection:
    config = RealtimeConfig(model="m", instructions="be kind", voice="v", transcription={"model": "asr"})
    conn = RealtimeConnection(
        vocab=vocab, config=config, limits=LimitOptions(**limits), options=RealtimeOptions(), now=now
    )
    [hello] = conn.start(now)
    assert (hello.audio_in.rate, hello.audio_out.rate, hello.subscribe) == (24000, 24000, "all")
    conn.accept([m.Sequenced(1, READY)], in_rate_hz=24000, busy=lambda: False, now=now)
    [created] = [json.loads(f) for f in conn.data_to_send()]
    assert created["type"] == "session.created"
    return conn


def send(conn: RealtimeConnection, event: dict[str, Any], now: float = 1.0) -> list[Any]:
    return conn.receive(json.dumps(event), now)


def relayed(out: list[Any]) -> list[dict[str, Any]]:
    return [x.message.data for x in out if isinstance(x, m.Relay) and isinstance(x.message, Event)]


def events(conn: RealtimeConnection, *messages: Any) -> list[dict[str, Any]]:
    return [json.loads(f) for msg in messages for f in conn.encode(m.Sequenced(9, msg))]


def kinds(evs: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in evs]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_session_created_reports_the_configured_session_in_each_dialect() -> None:
    for vocab in (GA, BETA):
        conn = RealtimeConnection(
            vocab=vocab,
            config=RealtimeConfig(model="gpt-x", instructions="hi", voice="v", turn_detection=TurnDetectionConfig()),
            limits=LimitOptions(),
            options=RealtimeOptions(),
            now=0.0,
        )
        conn.accept([READY], in_rate_hz=24000, busy=lambda: False, now=0.0)
        session = json.loads(conn.data_to_send()[0])["session"]
        assert (session["id"], session["model"], session["instructions"]) == ("sess_s1", "gpt-x", "hi")
        if vocab is GA:
            assert session["audio"]["input"]["turn_detection"]["type"] == "server_vad"
            assert session["output_modalities"] == ["audio"]
        else:
            assert (session["input_audio_format"], session["modalities"]) == ("pcm16", ["text", "audio"])


def test_session_update_configures_the_session_and_is_answered_in_order() -> None:
    conn = opened()
    update = {"instructions": "be brief", "output_modalities": ["text"], "audio": {"input": {"turn_detection": None}}}
    configure, updated = send(conn, {"type": "session.update", "session": {"type": "realtime", **update}})
    assert configure == m.Configure(
        system_prompt="be brief",
        speak=False,
        turn_detection=m.TurnDetection(manual=True, create_response=False, interrupt_response=False),
    )
    [event] = relayed([updated])
    assert event["session"]["audio"]["input"]["turn_detection"] is None
    assert event["session"]["output_modalities"] == ["text"]
    vad = {"turn_detection": {"type": "server_vad", "silence_duration_ms": 700, "threshold": 0.7}}
    configure, _ = send(conn, {"type": "session.update", "session": {"audio": {"input": vad}}})
    assert configure.turn_detection == m.TurnDetection(silence_ms=700, prefix_ms=300, threshold=0.7)


def test_tools_are_accepted_and_reported_as_unsupported() -> None:
    out = send(conn := opened(), {"type": "session.update", "session": {"tools": [{"type": "function", "name": "f"}]}})
    updated, warning = relayed(out)
    assert updated["session"]["tools"] == []
    assert (warning["error"]["code"], warning["error"]["param"]) == ("unsupported_tools", "session.tools")
    assert conn.close is None


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"audio": {"input": {"format": {"type": "audio/opus"}}}}, "session.audio.input.format.type"),
        ({"audio": {"input": {"turn_detection": {"threshold": 3}}}}, "session.audio.input.turn_detection.threshold"),
        ({"output_modalities": ["video"]}, "session.output_modalities"),
        ({"instructions": "x" * 5000}, "session.instructions"),
        ({"type": "transcription"}, "session.type"),
    ],
)
def test_a_bad_session_update_names_its_parameter_and_changes_nothing(session: dict[str, Any], param: str) -> None:
    conn = opened()
    [error] = relayed(send(conn, {"type": "session.update", "session": session, "event_id": "c1"}))
    assert (error["error"]["param"], error["error"]["event_id"]) == (param, "c1")
    assert conn.config.instructions == "be kind"


def test_appends_are_decoded_and_converted_to_the_sessions_24_khz_pcm() -> None:
    conn = opened()
    pcm = bytes(range(200)) * 24
    assert send(conn, {"type": "input_audio_buffer.append", "audio": b64(pcm)}) == [m.Audio(pcm)]
    send(conn, {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcmu"}}}}})
    [audio] = send(conn, {"type": "input_audio_buffer.append", "audio": b64(g711.encode(bytes(320), "pcmu"))})
    assert len(audio.data) == 160 * 3 * 2  # 160 mu-law samples at 8 kHz -> 480 PCM16 samples at 24 kHz


@pytest.mark.parametrize(
    ("audio", "code"),
    [("@@@", "invalid_value"), (b64(b"abc"), "invalid_value"), (None, "missing_required_parameter")],
)
def test_bad_appends_get_errors(audio: Any, code: str) -> None:
    [error] = relayed(send(opened(), {"type": "input_audio_buffer.append", "audio": audio}))
    assert error["error"]["code"] == code


def test_an_append_too_big_for_one_event_is_refused_not_fatal() -> None:
    conn = opened()
    [error] = relayed(send(conn, {"type": "input_audio_buffer.append", "audio": b64(bytes(2 << 20))}))
    assert error["error"]["code"] == "input_audio_buffer_append_too_large"
    assert conn.close is None


def test_commit_needs_100_ms_of_audio_and_clear_forgets_it() -> None:
    conn = opened()
    [error] = relayed(send(conn, {"type": "input_audio_buffer.commit"}))
    assert error["error"]["code"] == "input_audio_buffer_commit_empty"
    send(conn, {"type": "input_audio_buffer.append", "audio": b64(bytes(4800))})  # 100 ms
    assert send(conn, {"type": "input_audio_buffer.commit"}) == [m.Commit()]
    send(conn, {"type": "input_audio_buffer.append", "audio": b64(bytes(4800))})
    clear, cleared = send(conn, {"type": "input_audio_buffer.clear"})
    assert clear == m.ClearInput()
    assert relayed([cleared]) == [{"type": "input_audio_buffer.cleared"}]
    assert (
        relayed(send(conn, {"type": "input_audio_buffer.commit"}))[0]["error"]["code"]
        == "input_audio_buffer_commit_empty"
    )


def answer(conn: RealtimeConnection, turn: int, *words: str, audio_chunks: int = 2) -> list[dict[str, Any]]:
    return events(
        conn,
        *(m.Reply(stage="llm", turn=turn, text=w) for w in words),
        *(m.AudioOut(stage="tts", turn=turn, seq=i, data=bytes(960)) for i in range(audio_chunks)),
    )


def test_a_voice_turn_becomes_the_apis_events_in_order() -> None:
    conn = opened()
    start = events(conn, m.Vad(stage="vad", turn=3, event="speech_start", audio_ms=60.0))
    assert kinds(start) == ["input_audio_buffer.speech_started"]
    item_id = start[0]["item_id"]
    stop = events(conn, m.Vad(stage="vad", turn=3, event="speech_end", audio_ms=1000.0))
    assert kinds(stop) == [
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.added",
        "conversation.item.done",
        "response.created",
        "rate_limits.updated",
    ]
    assert stop[0]["audio_end_ms"] == 1000
    assert stop[2]["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    heard = events(
        conn,
        m.Transcript(stage="asr", turn=3, text="hello", final=False),
        m.Transcript(stage="asr", turn=3, text="hello there", final=False),
        m.Transcript(stage="asr", turn=3, text="yellow", final=False),
        m.Transcript(stage="asr", turn=3, text="hello there!", final=True),
    )
    assert [e.get("delta") for e in heard[:-1]] == ["hello", " there"]  # the revision is skipped
    assert (heard[-1]["item_id"], heard[-1]["transcript"], heard[-1]["usage"]["seconds"]) == (
        item_id,
        "hello there!",
        0.94,
    )
    body = answer(conn, 3, "Hi", " you")
    assert kinds(body) == [
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio.delta",
    ]
    response_id = body[0]["response_id"]
    end = events(conn, m.Metrics(turn=3, first_output_ms={}), m.TurnEnd(turn=3))
    assert kinds(end) == [
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
    ]
    done = end[-1]["response"]
    assert (done["id"], done["status"], done["output"][0]["content"][0]["transcript"]) == (
        response_id,
        "completed",
        "Hi you",
    )
    assert done["usage"]["output_token_details"] == {"text_tokens": 2, "audio_tokens": 0}
    assert answer(conn, 3, "late") == []  # nothing of a response after its response.done


def test_the_beta_names() -> None:
    conn = opened(BETA)
    events(conn, m.Vad(stage="vad", turn=1, event="speech_start"))
    stop = events(conn, m.Vad(stage="vad", turn=1, event="speech_end"))
    assert "conversation.item.created" in kinds(stop)
    body = answer(conn, 1, "Hi")
    assert kinds(body)[1:] == [
        "conversation.item.created",
        "response.content_part.added",
        "response.audio_transcript.delta",
        "response.audio.delta",
        "response.audio.delta",
    ]
    end = events(conn, m.TurnEnd(turn=1))
    assert kinds(end) == [
        "response.audio.done",
        "response.audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    assert end[-2]["item"]["content"] == [{"type": "audio", "transcript": "Hi"}]


def test_response_create_is_acked_with_its_turn_and_refused_while_one_runs() -> None:
    conn = opened()
    [create] = send(
        conn, {"type": "response.create", "response": {"instructions": "shout", "output_modalities": ["text"]}}
    )
    assert (create.instructions, create.speak) == ("shout", False)
    [busy] = relayed(send(conn, {"type": "response.create", "event_id": "c2"}))
    assert (busy["error"]["code"], busy["error"]["event_id"]) == ("conversation_already_has_active_response", "c2")
    started = events(conn, m.Ack(ref=create.ref, turn=5))
    assert kinds(started) == ["response.created", "rate_limits.updated"]
    assert started[0]["response"]["id"] in busy["error"]["message"]
    text = answer(conn, 5, "LOUD", audio_chunks=0)
    assert kinds(text)[-1] == "response.output_text.delta"
    [refused] = [create for create in send(conn, {"type": "response.cancel", "response_id": "resp_other"})]
    assert relayed([refused])[0]["error"]["code"] == "response_cancel_not_active"
    assert send(conn, {"type": "response.cancel"}) == [m.Interrupt()]
    cut = events(conn, m.Interrupted(turn=5, played_ms=0.0, text=""))
    assert cut[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert kinds(cut)[0] == "response.output_text.done"
    [idle] = relayed(send(conn, {"type": "response.cancel"}))
    assert idle["error"]["code"] == "response_cancel_not_active"


def test_a_refused_create_and_a_failed_answer() -> None:
    conn = opened()
    [create] = send(conn, {"type": "response.create", "event_id": "c3"})
    [error] = events(conn, m.Ack(ref=create.ref, code="conversation_already_has_active_response", message="busy"))
    assert (error["error"]["event_id"], error["error"]["message"]) == ("c3", "busy")
    events(conn, m.Vad(stage="vad", turn=2, event="speech_start"), m.Vad(stage="vad", turn=2, event="speech_end"))
    [failure] = events(conn, m.Error(code="upstream_unavailable", message="llm: down", turn=2))
    assert failure["error"]["type"] == "server_error"
    done = events(conn, m.TurnEnd(turn=2))[-1]["response"]
    assert (done["status"], done["status_details"]["error"]["code"]) == ("failed", "upstream_unavailable")


def test_items_by_name_create_truncate_delete() -> None:
    conn = opened()
    item = {"type": "message", "role": "system", "content": [{"type": "input_text", "text": "be short"}]}
    add, *announced = send(conn, {"type": "conversation.item.create", "item": {**item, "id": "mine"}})
    assert add == m.AddMessage(item="mine", role="system", text="be short")
    assert kinds(relayed(announced)) == ["conversation.item.added", "conversation.item.done"]
    first, *_ = send(conn, {"type": "conversation.item.create", "item": item, "previous_item_id": "root"})
    assert first.first
    after, *_ = send(conn, {"type": "conversation.item.create", "item": item, "previous_item_id": "mine"})
    assert after.after == m.ItemRef(item="mine")
    [unknown] = relayed(send(conn, {"type": "conversation.item.create", "item": item, "previous_item_id": "zz"}))
    assert unknown["error"]["param"] == "previous_item_id"
    [taken] = relayed(send(conn, {"type": "conversation.item.create", "item": {**item, "id": "mine"}}))
    assert taken["error"]["param"] == "item.id"
    [system_truncate] = relayed(
        send(conn, {"type": "conversation.item.truncate", "item_id": "mine", "audio_end_ms": 5})
    )
    assert system_truncate["error"]["param"] == "item_id"
    [create] = send(conn, {"type": "response.create"})
    events(conn, m.Ack(ref=create.ref, turn=4))
    answer_id = answer(conn, 4, "Hi")[0]["item"]["id"]
    [busy] = relayed(send(conn, {"type": "conversation.item.delete", "item_id": answer_id}))
    assert "in progress" in busy["error"]["message"]
    cut, truncated = send(
        conn, {"type": "conversation.item.truncate", "item_id": answer_id, "content_index": 0, "audio_end_ms": 20}
    )
    assert cut == m.TruncateReply(turn=4, audio_ms=20.0)
    assert relayed([truncated])[0]["audio_end_ms"] == 20
    assert (
        events(conn, m.Interrupted(turn=4, played_ms=20, text=""))[-1]["response"]["status_details"]["reason"]
        == "client_cancelled"
    )
    delete, deleted = send(conn, {"type": "conversation.item.delete", "item_id": answer_id})
    assert delete == m.DeleteItem(m.ItemRef(turn=4, role="assistant"))
    assert relayed([deleted]) == [{"type": "conversation.item.deleted", "item_id": answer_id}]
    assert (
        relayed(send(conn, {"type": "conversation.item.delete", "item_id": answer_id}))[0]["error"]["code"]
        == "item_not_found"
    )


def test_an_audio_item_is_transcribed_under_its_own_name() -> None:
    conn = opened()
    content = [{"type": "input_audio", "audio": b64(bytes(9600))}]
    add, *announced = send(
        conn, {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": content}}
    )
    assert isinstance(add, m.AddAudio)
    assert len(add.pcm) == 9600
    item_id = relayed(announced)[0]["item"]["id"]
    assert events(conn, m.Ack(ref=add.ref, turn=8)) == []
    [done] = events(conn, m.Transcript(stage="asr", turn=8, text="words", final=True))
    assert (done["item_id"], done["transcript"]) == (item_id, "words")
    assert events(conn, m.TurnEnd(turn=8)) == []  # a turn the agent does not answer: no response


def test_unknown_malformed_and_unsupported_events_are_errors_not_closes() -> None:
    conn = opened()
    cases: list[tuple[str | bytes, str]] = [
        (json.dumps({"type": "dance"}), "invalid_value"),
        (json.dumps({"no": "type"}), "invalid_event"),
        ("{not json", "invalid_json"),
        (b"\x81\xa4type\xa4ping", "invalid_event"),
        (json.dumps({"type": "conversation.item.retrieve", "item_id": "x"}), "unsupported_event"),
    ]
    for frame, code in cases:
        [error] = relayed(conn.receive(frame, 1.0))
        assert error["error"]["code"] == code
    assert conn.close is None
    assert events(conn, m.Pong(id=1), m.Metrics(turn=1, first_output_ms={})) == []  # no Realtime meaning


def test_g711_output_deltas_are_8_khz_bytes() -> None:
    conn = opened()
    send(conn, {"type": "session.update", "session": {"audio": {"output": {"format": {"type": "audio/pcma"}}}}})
    events(conn, m.Vad(stage="vad", turn=1, event="speech_start"), m.Vad(stage="vad", turn=1, event="speech_end"))
    deltas = [e for e in answer(conn, 1, "Hi", audio_chunks=3) if e["type"] == "response.output_audio.delta"]
    assert [len(base64.b64decode(e["delta"])) for e in deltas] == [160, 160, 160]  # 20 ms of A-law each


def test_the_limits_of_ws_apply() -> None:
    flood = opened(messages_per_s=10, messages_burst=3)
    for _ in range(3):
        send(flood, {"type": "input_audio_buffer.clear"})
    assert send(flood, {"type": "input_audio_buffer.clear"}) == []
    [error] = [json.loads(f) for f in flood.data_to_send()]
    assert (error["error"]["code"], flood.close.code if flood.close else None) == ("rate_limited", 1008)
    idle = opened(idle_timeout_s=5.0, max_session_s=None)
    assert idle.deadline() == 5.0
    idle.timeout(5.0)
    assert idle.close is not None
    assert json.loads(idle.data_to_send()[0])["error"]["code"] == "idle_timeout"
    audio = opened(audio_max_realtime=1.0, audio_burst_s=1.0, messages_per_s=None)
    second = {"type": "input_audio_buffer.append", "audio": b64(bytes(48000))}
    results = [send(audio, second, now=1.0) for _ in range(30)]
    assert audio.close is not None
    assert audio.close.code == 1008
    assert sum(1 for r in results if r) < 30


def test_the_item_registry_is_bounded_and_a_clear_forgets_open_utterances() -> None:
    from transports.realtime_out import MAX_ITEMS

    conn = opened(messages_per_s=None)
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "x"}]}
    for i in range(MAX_ITEMS + 10):
        send(conn, {"type": "conversation.item.create", "item": {**item, "id": f"i{i}"}})
    assert len(conn.translator.items) == MAX_ITEMS
    assert "i0" not in conn.translator.items
    events(conn, m.Vad(stage="vad", turn=7, event="speech_start"))
    assert 7 in conn.translator.user_items
    send(conn, {"type": "input_audio_buffer.clear"})
    assert 7 not in conn.translator.user_items

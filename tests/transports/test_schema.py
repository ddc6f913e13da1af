"""transports/schema.py: the JSON Schema at GET /schema accepts every message the codec produces, and no other."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest

from transports import messages as m
from transports.schema import build_schema
from transports.wire import Framing, encode

SCHEMA = build_schema()
SAMPLES: list[Any] = [
    m.Ready(
        session="s1",
        graph=[m.GraphNode("vad", "energy", "audio", "speech")],
        audio_in=m.AudioFormat(rate=16000),
        audio_out=m.AudioFormat(rate=24000),
    ),
    m.Vad(stage="vad", turn=1, event="speech_start"),
    m.Transcript(stage="asr", turn=1, text="hi", final=True),
    m.Reply(stage="llm", turn=1, text="hello", final=False),
    m.AudioOut(stage="tts", turn=1, seq=0, data=b"\x00\x01"),
    m.TurnEnd(turn=1),
    m.Interrupted(turn=1, played_ms=120.5, text="hel"),
    m.Metrics(turn=1, first_output_ms={"llm": 12.0}, voice_to_voice_ms=300.0),
    m.Error(code="bad_field", message="x", fatal=False),
    m.Pong(id=3),
    m.WebrtcAnswer(sdp="v=0"),
    m.Hello(protocol=1, subscribe=["llm"], session=m.SessionOptions(system_prompt="be brief")),
    m.Audio(data=b"\x00\x00"),
    m.Input(data="hi", stage="llm"),
    m.Played(turn=1, ms=20.0),
]


def validator(side: str, kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**SCHEMA, "$ref": f"#/$defs/{side}.{kind}"})


def test_the_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda x: x.type)
def test_every_encoded_message_validates(message: Any) -> None:
    side = "client" if type(message) in m.CLIENT_MESSAGES else "server"
    data = json.loads(encode(message, Framing.JSON))
    validator(side, message.type).validate(data)


def test_every_message_type_is_described() -> None:
    kinds = {name for name in SCHEMA["$defs"] if "." in name}
    assert kinds == {f"client.{c.type}" for c in m.CLIENT_MESSAGES} | {f"server.{c.type}" for c in m.SERVER_MESSAGES}


@pytest.mark.parametrize(
    ("kind", "bad"),
    [
        ("server.audio", {"type": "audio", "stage": "tts", "turn": 1, "data": ""}),  # no seq
        ("server.vad", {"type": "vad", "stage": "vad", "turn": 1, "event": "cough"}),
        ("client.played", {"type": "played", "turn": "one", "ms": 1}),
    ],
)
def test_broken_messages_do_not_validate(kind: str, bad: dict[str, Any]) -> None:
    side, name = kind.split(".")
    with pytest.raises(jsonschema.ValidationError):
        validator(side, name).validate(bad)

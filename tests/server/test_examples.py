"""Every config in examples/ loads and builds (``load_config`` + ``build_pipeline``); the all-services
OpenAI example also serves a spoken turn with its endpoints pointed at a fake OpenAI on loopback.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.config import load_config
from stages.registry import build_pipeline
from tests.client import Client, running_server, silence, tone
from tests.fakes.services import FakeOpenAi

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENGINES = {
    "openai.yaml": ["webrtcvad", "openai_asr", "openai", "openai_tts"],
    "ollama.yaml": ["webrtcvad", "whisper", "ollama", "piper"],
    "vllm.yaml": ["webrtcvad", "whisper", "openai", "piper"],
    "dify.yaml": ["webrtcvad", "whisper", "dify", "piper"],
    "gpt-sovits.yaml": ["webrtcvad", "whisper", "llama", "gpt_sovits"],
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(ENGINES)


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_example_loads_and_builds(name: str) -> None:
    config = load_config(EXAMPLES / name)
    specs = build_pipeline(config.pipeline)
    assert [s.engine_name for s in specs] == ENGINES[name]
    assert [s.name for s in specs] == ["vad", "asr", "llm", "tts"]
    text = (EXAMPLES / name).read_text()
    assert not re.search(r"\b(sk|app)-[A-Za-z0-9]{6,}", text)  # keys come from the environment, never the file
    for spec in specs:
        upstream = getattr(getattr(spec.factory, "backend", None), "upstream", None)
        if upstream is not None:
            assert all(ep.url.startswith(("http://", "https://")) for ep in upstream.endpoints)


def point_at(data: dict[str, Any], url: str) -> dict[str, Any]:
    for entry in data["pipeline"]:
        if "url" in entry:
            entry["url"] = url
    data["server"] = {**data.get("server", {}), "port": 0}
    return data


async def test_openai_example_serves_a_spoken_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake-for-tests")
    async with FakeOpenAi(api_key="sk-fake-for-tests") as fake:
        data = point_at(yaml.safe_load((EXAMPLES / "openai.yaml").read_text()), fake.url)
        async with running_server(data) as srv, Client.connect(srv.url) as c:
            await c.stream_audio(silence(200) + tone(800, amplitude=0.5) + silence(700), realtime=4.0)
            msgs = await c.turn(timeout=15)
            final = next(m for m in msgs if m["type"] == "transcript" and m["final"])
            assert final["text"].startswith("hello from the fake (")
            reply = "".join(m["text"] for m in msgs if m["type"] == "reply")
            assert reply == "You said: " + final["text"]
            assert sum(len(m["data"]) for m in msgs if m["type"] == "audio") > 0
            assert msgs[-1]["type"] == "turn_end"
        paths = [r.path for r in fake.requests]
        assert paths == ["/v1/audio/transcriptions", "/v1/chat/completions", *paths[2:]]
        assert set(paths[2:]) == {"/v1/audio/speech"}
        assert fake.requests[1].json()["model"] == "gpt-4o-mini"
        assert all(r.headers["authorization"] == "Bearer sk-fake-for-tests" for r in fake.requests)

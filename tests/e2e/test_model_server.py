"""The OpenAI-compatible backend against a real model server, not a fake: llama.cpp's own
``python -m llama_cpp.server`` serving SmolLM2 on a free loopback port (``tests/model_server.py``).

- A spoken turn: Piper's voice in over a real socket, webrtcvad and whisper, the reply streamed from the
  model server over HTTP (SSE), Piper speaks it back; the trace shows the upstream attempt.
- Barge-in cancels the HTTP stream: the model server logs the disconnect and its generation stops far
  short of ``max_tokens`` (its end-of-text tokens are banned, so only the disconnect can stop it).
- Two voxpipe processes share the one model server (workers for sockets, a separate model tier).
Marked ``models``; skipped with the reason when a model package or the server extra is missing.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from tests.embedded import require_models, words
from tests.speech import spoken

require_models()
for needed in ("uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
    pytest.importorskip(needed, reason="llama-cpp-python's server extra is not installed (make install-test)")
pytest.importorskip("opentelemetry.sdk", reason="the telemetry extra is not installed")

from tests.client import Client, running_server, silence, test_config  # noqa: E402
from tests.model_server import NO_EOS, ModelServer, model_server, openai_llm  # noqa: E402
from tests.waiting import wait_until  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]
# silence after the question, as a microphone left open sends: the VAD waits up to end_incomplete_ms (1200)
# when the words so far sound unfinished
TRAILING_MS = 1500


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def llm_server() -> AsyncIterator[ModelServer]:
    async with model_server() as server:
        yield server


def embedded_with(llm: dict[str, Any]) -> dict[str, Any]:
    """The real config.yaml, its LLM stage pointed at the model server, traces in memory."""
    config: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.setdefault("server", {})["port"] = 0
    config["pipeline"] = [llm if entry["name"] == "llm" else entry for entry in config["pipeline"]]
    config["telemetry"] = {"traces": True, "exporter": "memory"}
    return config


def spans(server: Any, name: str) -> list[Any]:
    return [s for s in server.tracer.memory.get_finished_spans() if s.name == name]


async def test_a_spoken_turn_streams_through_the_model_server(llm_server: ModelServer) -> None:
    config = embedded_with(openai_llm(llm_server, max_tokens=64, temperature=0.2))
    async with running_server(config) as srv:
        before = llm_server.requests()
        sentence = "What is the capital of France?"
        async with Client.connect(srv.url) as c:
            await c.stream_audio(silence(300) + spoken(srv, sentence) + silence(TRAILING_MS), realtime=1.0)
            msgs = await c.turn(timeout=90)
        attempts = spans(srv, "upstream.request")
    assert msgs[-1]["type"] == "turn_end", [m for m in msgs if m["type"] == "error"]
    turn = msgs[-1]["turn"]
    final = [m for m in msgs if m["type"] == "transcript" and m["final"]]
    assert [words(m["text"]) for m in final] == [words(sentence)]
    deltas = [m for m in msgs if m["type"] == "reply" and m["turn"] == turn and m["text"]]
    assert len(deltas) >= 3  # streamed token by token, not one blob
    assert "paris" in words("".join(m["text"] for m in deltas))
    assert sum(len(m["data"]) for m in msgs if m["type"] == "audio") > 16000  # over half a second spoken
    assert llm_server.requests() == before + 1
    metrics = next(m for m in msgs if m["type"] == "metrics")
    assert set(metrics["first_output_ms"]) == {"vad", "asr", "llm", "tts"}
    [attempt] = attempts
    assert attempt.attributes["voxpipe.endpoint"] == llm_server.url
    assert attempt.attributes["voxpipe.http_status"] == 200
    assert attempt.attributes["voxpipe.outcome"] == "ok"
    print(f"\nreply {''.join(m['text'] for m in deltas)!r}; metrics {metrics}")


async def completion_s(server: ModelServer, max_tokens: int) -> float:
    """Seconds for one non-streamed completion of exactly ``max_tokens`` tokens, straight to the model server.

    It serves one generation at a time, so this also waits for any generation still running there."""
    body = {"model": "smollm2", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "Count."}], **NO_EOS}
    async with httpx.AsyncClient(timeout=60.0) as http:
        started = time.monotonic()
        response = await http.post(f"{server.url}/v1/chat/completions", json=body)
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == max_tokens
    return elapsed


async def test_barge_in_cancels_the_http_stream_and_the_generation_stops(llm_server: ModelServer) -> None:
    max_tokens = 1000  # with its end tokens banned, only a disconnect stops the model before this
    config = embedded_with(openai_llm(llm_server, max_tokens=max_tokens, temperature=0.2, extra_body=NO_EOS))
    s_per_token = await completion_s(llm_server, 100) / 100  # this machine's speed now (prompt included)
    async with running_server(config) as srv:
        disconnects = llm_server.disconnects()
        async with Client.connect(srv.url) as c:
            question = spoken(srv, "Count from one to one hundred.")
            await c.stream_audio(silence(300) + question + silence(TRAILING_MS), realtime=1.0)
            first = await c.recv_type("audio", timeout=60)
            turn = first["turn"]
            barge = asyncio.create_task(c.stream_audio(spoken(srv, "Stop, please wait a moment."), realtime=1.0))
            got = await c.recv_until(lambda m: m["type"] == "interrupted" and m["turn"] == turn, timeout=30)
            deltas = len([m for m in c.received if m["type"] == "reply" and m.get("turn") == turn and m["text"]])
            # the model server notices the closed stream (at its next token) and says so in its log
            noticed_s = await wait_until(lambda: llm_server.disconnects() > disconnects, timeout_s=5)
            # a one-token request right away (the barge-in's own turn is still being spoken): served at once,
            # so the cut generation is not running any more (it would hold the model for its remaining tokens)
            probe_s = await completion_s(llm_server, 1)
            await barge
        attempts = [s for s in spans(srv, "upstream.request") if s.attributes["voxpipe.outcome"] == "cancelled"]
        generate = [s for s in spans(srv, "llm.generate") if s.attributes["voxpipe.outcome"] == "cancelled"]
    assert got[-1]["type"] == "interrupted"
    remaining_s = (max_tokens - deltas) * s_per_token
    assert deltas < max_tokens // 2
    assert probe_s < min(2.0, remaining_s / 3), f"probe {probe_s:.2f} s; the rest of the reply: {remaining_s:.1f} s"
    assert attempts  # the cut turn's upstream span ended cancelled, and its generation span too
    assert generate
    print(
        f"\ncut after {deltas} of {max_tokens} tokens; the model server logged the disconnect "
        f"{noticed_s * 1000:.0f} ms after the client saw the cut; a 1-token request then took {probe_s * 1000:.0f} ms "
        f"(the rest of the reply would have held the model {remaining_s:.1f} s at {1 / s_per_token:.0f} tokens/s)"
    )


async def start_voxpipe(config: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "server", "serve", "--config", str(config), "--port", "0"),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    assert proc.stderr is not None
    banner = ""
    while "WebSocket" not in banner:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        if not line:
            raise RuntimeError(f"voxpipe exited: {banner}")
        banner += line
    found = re.search(r"ws://[^ )]+", banner)
    assert found is not None
    return proc, found.group(0)


async def test_two_voxpipe_processes_share_the_model_server(llm_server: ModelServer, tmp_path: Path) -> None:
    config = test_config()
    config["pipeline"][2] = openai_llm(llm_server, max_tokens=24, temperature=0.2)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    procs: list[asyncio.subprocess.Process] = []
    before = llm_server.requests()
    try:
        started = await asyncio.gather(start_voxpipe(path), start_voxpipe(path))
        procs = [proc for proc, _url in started]

        async def one_turn(url: str, text: str) -> list[dict[str, Any]]:
            async with Client.connect(url) as c:
                await c.send({"type": "text", "text": text})
                return await c.turn(timeout=60)

        turns = await asyncio.gather(
            one_turn(started[0][1], "Name a color."), one_turn(started[1][1], "Name an animal.")
        )
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await asyncio.wait_for(proc.wait(), 20)
    for msgs in turns:
        assert msgs[-1]["type"] == "turn_end"
        assert "".join(m["text"] for m in msgs if m["type"] == "reply").strip()
        assert any(m["type"] == "audio" for m in msgs)
    assert llm_server.requests() == before + 2
    firsts = [next(m for m in msgs if m["type"] == "metrics")["first_output_ms"]["llm"] for msgs in turns]
    print(f"\nfirst token per worker, ms: {firsts} (one model server: the second waits for the first's reply)")

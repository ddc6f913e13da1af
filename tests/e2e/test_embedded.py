"""The embedded offline stack end to end through the real server on the real ``config.yaml``.

Piper speaks, the speech is resampled to 16 kHz and streamed in 20 ms frames over a real socket;
webrtcvad cuts it, whisper hears it, llama.cpp answers, Piper speaks the answer back. One server
(models loaded once) for the module. Marked ``models``; skipped with the reason printed when a
model package is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import yaml

from tests.embedded import require_models, words
from tests.speech import spoken

require_models()

from stages.executor import SHEDDABLE  # noqa: E402
from tests.client import Client, noise, running_server, silence  # noqa: E402
from tests.waiting import wait_until  # noqa: E402
from vocab.errors import StageError  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]
ROOT = Path(__file__).resolve().parents[2]
OUT_RATE_HZ = 24000  # not Piper's 22050: the reply is resampled on the way out


def hello() -> dict[str, Any]:
    return {"audio_out": {"format": "pcm16", "rate": OUT_RATE_HZ}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.setdefault("server", {})["port"] = 0
    async with running_server(config) as running:
        yield running


def pcm_of(msgs: list[dict[str, Any]], turn: int) -> np.ndarray:
    return np.frombuffer(b"".join(m["data"] for m in msgs if m["type"] == "audio" and m["turn"] == turn), "<i2")


async def test_a_spoken_question_gets_a_spoken_answer(server: Any) -> None:
    sentence = "What is the capital of France?"
    async with Client.connect(server.url, hello=hello()) as c:
        assert c.ready["audio_out"]["rate"] == OUT_RATE_HZ
        await c.stream_audio(silence(300) + spoken(server, sentence) + silence(600), realtime=1.0)
        msgs = await c.turn(timeout=60)
    assert msgs[-1]["type"] == "turn_end"
    turn = msgs[-1]["turn"]
    final = [m for m in msgs if m["type"] == "transcript" and m["final"]]
    assert [words(m["text"]) for m in final] == [words(sentence)]
    reply = "".join(m["text"] for m in msgs if m["type"] == "reply" and m["turn"] == turn).strip()
    assert reply
    samples = pcm_of(msgs, turn)
    assert samples.size > OUT_RATE_HZ * 0.5
    assert np.abs(samples).max() > 5000
    seqs = [m["seq"] for m in msgs if m["type"] == "audio"]
    assert seqs == list(range(len(seqs)))
    # 20 ms chunks at 24 kHz (the last one of each clause may be shorter)
    assert max(len(m["data"]) for m in msgs if m["type"] == "audio") == OUT_RATE_HZ * 20 // 1000 * 2
    metrics = next(m for m in msgs if m["type"] == "metrics")
    assert set(metrics["first_output_ms"]) == {"vad", "asr", "llm", "tts"}
    assert 0 < metrics["voice_to_voice_ms"] < 20000
    print(f"\nheard {final[0]['text']!r}, said {reply!r}; metrics {metrics}")


async def test_speech_over_the_agent_interrupts_it_and_is_answered(server: Any) -> None:
    question = spoken(server, "Please tell me a joke.")
    async with Client.connect(server.url, hello=hello()) as c:
        await c.send({"type": "say", "text": "This is a long answer that keeps going for quite a while. " * 4})
        first = await c.recv_type("audio", timeout=30)
        agent_turn = first["turn"]
        await c.stream_audio(question + silence(700), realtime=1.0)
        cut = next((m for m in c.received if m["type"] == "interrupted"), None)
        if cut is None:
            cut = await c.recv_type("interrupted", timeout=10)
        assert cut["turn"] == agent_turn
        assert cut["played_ms"] > 0
        rest = await c.recv_until(lambda m: m["type"] == "turn_end" and m["turn"] > agent_turn, timeout=60)
    after_cut = [m for m in c.received if m["_at"] > cut["_at"] and m.get("turn") == agent_turn]
    assert after_cut == []  # nothing of the interrupted turn after `interrupted`
    user_turn = rest[-1]["turn"]
    final = [m for m in rest if m["type"] == "transcript" and m["final"] and m["turn"] == user_turn]
    assert "joke" in words(final[0]["text"])  # tiny.en sometimes hears "a" as "they" when the start is clipped
    assert pcm_of(rest, user_turn).size > 0  # the new turn is answered with speech


async def test_noise_bursts_shorter_than_barge_in_do_not_interrupt(server: Any) -> None:
    min_ms = server.config.session.barge_in_min_ms
    assert min_ms >= 200
    async with Client.connect(server.url, hello=hello()) as c:
        await c.send({"type": "say", "text": "Counting slowly: one, two, three, four, five, six."})
        first = await c.recv_type("audio", timeout=30)
        for i in range(3):  # loud white noise: webrtcvad calls it speech, but each burst is too short
            await c.stream_audio(noise(min_ms / 2, seed=i) + silence(300), realtime=1.0)
        msgs = await c.recv_until(
            lambda m: m["type"] in ("turn_end", "interrupted") and m["turn"] == first["turn"], timeout=30
        )
    assert msgs[-1]["type"] == "turn_end"


async def test_event_loop_lag_during_a_spoken_turn(server: Any) -> None:
    """All model work runs in executors: the loop keeps its 10 ms ticks while a turn runs."""
    lags_ms: list[float] = []

    async def probe() -> None:
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            lags_ms.append((time.perf_counter() - start - 0.01) * 1000)

    speech = spoken(server, "Tell me about the moon.")
    task = asyncio.create_task(probe())
    try:
        async with Client.connect(server.url, hello=hello()) as c:
            await c.stream_audio(silence(200) + speech + silence(600), realtime=1.0)
            msgs = await c.turn(timeout=60)
    finally:
        task.cancel()
    assert msgs[-1]["type"] == "turn_end"
    p99 = float(np.percentile(lags_ms, 99))
    print(
        f"\nevent-loop lag during a spoken turn: p50 {np.median(lags_ms):.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(lags_ms):.1f} ms over {len(lags_ms)} ticks"
    )
    # Target 20 ms (bench/voice_to_voice.py --in-process reports it); the margin here absorbs other
    # processes competing for this shared machine's two cores, which delay the loop thread itself.
    assert p99 < 50


async def test_a_whisper_line_full_of_other_sessions_partials_still_hears_every_word(server: Any) -> None:
    """Load must make answers slower, never wrong: with whisper's line kept full of other sessions'
    partial decodes for the whole utterance, the final goes first (a partial is shed for it) and is
    exact, with no ``busy`` error. Before finals had priority, the full line refused the final."""
    whisper = next(spec.factory.backend for spec in server.specs if spec.engine_name == "whisper")
    executor = whisper.executor
    slots = executor.max_workers + whisper.options.max_waiting
    sentence = "What is the tallest mountain in the world?"
    speech = spoken(server, sentence)
    stop = asyncio.Event()
    busy_partials = 0  # of the loader's partials, shed for more urgent calls

    async def other_sessions_partials() -> None:  # 30 ms decodes, the line topped up as each one ends
        nonlocal busy_partials
        line: set[asyncio.Future[None]] = set()
        while not stop.is_set():
            while executor.in_use < slots:
                line.add(asyncio.wrap_future(executor.submit(time.sleep, 0.03, priority=SHEDDABLE)))
            done, line = await asyncio.wait(line, return_when=asyncio.FIRST_COMPLETED)
            busy_partials += sum(1 for f in done if f.exception() is not None)
        for future in line:
            with contextlib.suppress(StageError):
                await future

    shed_before = executor.shed
    loader = asyncio.create_task(other_sessions_partials())
    try:
        await wait_until(lambda: executor.in_use == slots)
        async with Client.connect(server.url, hello=hello()) as c:
            await c.stream_audio(silence(300) + speech + silence(900), realtime=1.0)
            msgs = await c.turn(timeout=60)
    finally:
        stop.set()
        await loader
    assert [m for m in msgs if m["type"] == "error"] == []
    assert msgs[-1]["type"] == "turn_end"
    final = [m["text"] for m in msgs if m["type"] == "transcript" and m["final"]]
    assert [words(text) for text in final] == [words(sentence)]
    assert executor.shed > shed_before  # the line was full when the final came: a partial made room
    assert busy_partials >= 1  # shed partials fail with busy (the session's own ones are skipped silently)

"""``/v1/realtime`` on the embedded offline stack (webrtcvad, whisper tiny.en, SmolLM2, Piper) with the SDK.

One spoken turn per dialect (Piper speech in, the transcript and a spoken answer out), a cancel that leaves
nothing stale, and G.711 mu-law in and out through the embedded ASR. One server (models loaded once) for
the module; marked ``models``, skipped with the reason printed when a model package is missing.
"""

from __future__ import annotations

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

from tests.client import running_server, silence  # noqa: E402
from tests.realtime import Events, audio_of, b64, sdk_connect, types  # noqa: E402
from transports import g711  # noqa: E402

pytestmark = [pytest.mark.models, pytest.mark.asyncio(loop_scope="module")]
ROOT = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[Any]:
    config: dict[str, Any] = yaml.safe_load((ROOT / "config.yaml").read_text())
    config.setdefault("server", {})["port"] = 0
    async with running_server(config) as running:
        yield running


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_a_spoken_question_gets_a_transcript_and_a_spoken_answer(server: Any, dialect: str) -> None:
    sentence = "What is the capital of France?"
    beta = dialect == "beta"
    async with sdk_connect(server, beta=beta) as conn:
        ev = Events(conn)
        created = (await ev.until_type("session.created"))[-1]
        assert created.session.model == "gpt-realtime"
        await ev.send_audio(silence(300, 24000) + spoken(server, sentence, 24000) + silence(800, 24000))
        turn = await ev.until_type("response.done", timeout=90)
    heard = next(e for e in turn if e.type == "conversation.item.input_audio_transcription.completed")
    assert words(heard.transcript) == words(sentence)
    done = turn[-1].response
    assert done.status == "completed"
    transcript_done = "response.audio_transcript.done" if beta else "response.output_audio_transcript.done"
    said = next(e for e in turn if e.type == transcript_done).transcript
    assert said.strip()
    samples = np.frombuffer(audio_of(turn, done.id), "<i2")
    assert samples.size > 24000 * 0.5  # at least half a second of speech, at 24 kHz
    assert np.abs(samples).max() > 5000
    assert types(turn).index("input_audio_buffer.speech_started") < types(turn).index("response.created")
    print(f"\n[{dialect}] heard {heard.transcript!r}, said {said!r}")


async def test_cancel_leaves_no_stale_audio(server: Any) -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a long story."}]}
    async with sdk_connect(server) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        await conn.conversation.item.create(item=item)
        await conn.response.create(response={"instructions": "Tell a long story about a dragon, in ten sentences."})
        first = (await ev.until_type("response.output_audio.delta", timeout=60))[-1]
        await conn.response.cancel()
        done = (await ev.until_type("response.done", timeout=10))[-1]
        assert (done.response.id, done.response.status) == (first.response_id, "cancelled")
        in_flight_ms = len(audio_of(ev.seen, first.response_id)) / 48
        assert in_flight_ms < 1000  # paced: a few hundred ms of lead, not the whole story
        await conn.conversation.item.create(item={**item, "content": [{"type": "input_text", "text": "Thanks."}]})
        await conn.response.create()
        again = (await ev.until_type("response.done", timeout=60))[-1]
        assert again.response.status == "completed"
    after = ev.seen[ev.seen.index(done) + 1 :]
    assert not [e for e in after if getattr(e, "response_id", None) == first.response_id]


async def test_g711_mu_law_round_trips_through_the_embedded_asr(server: Any) -> None:
    sentence = "Please tell me a joke."
    narrow = spoken(server, sentence, 8000)
    pcmu = {"type": "audio/pcmu"}
    async with sdk_connect(server) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        audio = {"input": {"format": pcmu}, "output": {"format": pcmu}}
        await conn.session.update(session={"type": "realtime", "audio": audio})
        await ev.until_type("session.updated")
        mulaw = g711.encode(silence(300, 8000) + narrow + silence(800, 8000), "pcmu")
        for i in range(0, len(mulaw), 160):  # 20 ms per append, as a telephony bridge sends
            await conn.input_audio_buffer.append(audio=b64(mulaw[i : i + 160]))
        turn = await ev.until_type("response.done", timeout=90)
    heard = next(e for e in turn if e.type == "conversation.item.input_audio_transcription.completed")
    assert "joke" in words(heard.transcript)
    out = audio_of(turn, turn[-1].response.id)  # mu-law bytes at 8 kHz
    assert len(out) > 8000 * 0.5
    decoded = np.frombuffer(g711.decode(out, "pcmu"), "<i2")
    assert np.abs(decoded).max() > 5000
    print(f"\n[g711] heard {heard.transcript!r}")

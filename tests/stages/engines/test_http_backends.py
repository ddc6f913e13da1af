"""Each HTTP backend against a fake of its service speaking the real protocol (real sockets, real httpx):
request shape, streamed output, and the service's own ways of failing. Plus the body-format readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import time
import wave
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stages.engines.dify_llm import CONVERSATION_KEY, DifyLlm
from stages.engines.gpt_sovits import GptSovitsTts
from stages.engines.http_common import WavStreamReader, body_lines, sse_events, wav_bytes
from stages.engines.ollama_llm import OllamaLlm
from stages.engines.openai_asr import OpenAiAsr
from stages.engines.openai_llm import OpenAiLlm
from stages.engines.openai_tts import OpenAiTts
from stages.registry import build_pipeline
from tests.fakes.services import FakeDify, FakeGptSovits, FakeOllama, FakeOpenAi, tone_pcm, wav_header
from tests.stage_context import stage_context
from vocab.errors import ConfigError, UpstreamError
from vocab.options import build

FAST = {"retries": 1, "backoff_ms": 1, "connect_timeout_s": 1.0, "read_timeout_s": 1.0}


@contextlib.asynccontextmanager
async def backend(cls: Any, **options: Any) -> AsyncIterator[Any]:
    made = cls(build(cls.Options, {**FAST, **options}, "pipeline[2]"))
    try:
        yield made
    finally:
        await made.aclose()


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in stream]


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "what time is it"}]


# ---------------------------------------------------------------------- OpenAI-compatible chat


async def test_openai_chat_request_and_stream() -> None:
    async with (
        FakeOpenAi() as fake,
        backend(
            OpenAiLlm, url=fake.url, model="gpt-4o-mini", temperature=0.2, max_tokens=50, extra_body={"seed": 7}
        ) as llm,
    ):
        deltas = await collect(llm.stream(MESSAGES, ctx=stage_context()))
        assert deltas == ["You", " said:", " what", " time", " is", " it"]
        request = fake.requests[0]
        assert (request.method, request.path) == ("POST", "/v1/chat/completions")
        assert request.headers["content-type"] == "application/json"
        assert request.headers["accept"] == "text/event-stream"
        assert request.json() == {
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "stream": True,
            "temperature": 0.2,
            "max_tokens": 50,
            "seed": 7,
        }


async def test_openai_base_url_with_v1_is_accepted() -> None:
    async with FakeOpenAi() as fake, backend(OpenAiLlm, url=fake.url + "/v1", model="m") as llm:
        assert "".join(await collect(llm.stream(MESSAGES, ctx=stage_context()))) == "You said: what time is it"
        assert fake.requests[0].path == "/v1/chat/completions"


def test_sse_reader_follows_the_spec() -> None:
    body = (
        b": keep-alive\n\nevent: note\ndata: one\ndata: two\n\nid: 3\nretry: 10\ndata:three\n\ndata: tail-without-blank"
    )

    async def read() -> list[tuple[str, str]]:
        return [(e.event, e.data) async for e in sse_events(httpx.Response(200, content=body))]

    assert asyncio.run(read()) == [("note", "one\ntwo"), ("message", "three"), ("message", "tail-without-blank")]


# ---------------------------------------------------------------------- Ollama


async def test_ollama_request_and_ndjson_stream() -> None:
    async with (
        FakeOllama() as fake,
        backend(
            OllamaLlm, url=fake.url, model="llama3.2", options={"num_predict": 64}, keep_alive="10m", think=False
        ) as llm,
    ):
        deltas = await collect(llm.stream(MESSAGES, ctx=stage_context()))
        assert deltas == ["You", " said:", " what", " time", " is", " it"]
        request = fake.requests[0]
        assert request.path == "/api/chat"
        assert request.json() == {
            "model": "llama3.2",
            "messages": MESSAGES,
            "stream": True,
            "options": {"num_predict": 64},
            "keep_alive": "10m",
            "think": False,
        }


async def test_ollama_unknown_model_is_a_bad_response_not_retried() -> None:
    async with FakeOllama() as fake, backend(OllamaLlm, url=fake.url, model="nope") as llm:
        with pytest.raises(UpstreamError) as err:
            await collect(llm.stream(MESSAGES, ctx=stage_context()))
        assert err.value.code == "upstream_bad_response"
        assert 'model \\"nope\\" not found' in err.value.message
        assert len(fake.requests) == 1


async def test_ollama_error_line_midway() -> None:
    async with FakeOllama() as fake, backend(OllamaLlm, url=fake.url, model="llama3.2") as llm:
        fake.fail_next("error")
        got: list[str] = []
        with pytest.raises(UpstreamError) as err:
            async for delta in llm.stream(MESSAGES, ctx=stage_context()):
                got.append(delta)
        assert err.value.code == "upstream_bad_response"
        assert "an error was encountered while running the model" in err.value.message
        assert got == ["You", " said:", " what"]
        assert len(fake.requests) == 1


@pytest.mark.parametrize(
    ("fault", "code"), [("malformed", "upstream_bad_response"), ("midway", "upstream_unavailable")]
)
async def test_ollama_faults_before_and_after_the_first_delta(fault: str, code: str) -> None:
    async with (
        FakeOllama() as a,
        FakeOllama() as c,
        backend(OllamaLlm, endpoints=[{"url": a.url}, {"url": c.url}], model="llama3.2") as llm,
    ):
        a.fail_next(fault)
        if fault == "malformed":  # before the first delta: retried on the other endpoint
            assert "".join(await collect(llm.stream(MESSAGES, ctx=stage_context()))) == "You said: what time is it"
            assert len(c.requests) == 1
        else:
            with pytest.raises(UpstreamError) as err:
                await collect(llm.stream(MESSAGES, ctx=stage_context()))
            assert err.value.code == code
            assert len(c.requests) == 0


# ---------------------------------------------------------------------- Dify


async def test_dify_keeps_the_conversation_per_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXPIPE_TEST_DIFY_KEY", "app-fake-key")
    async with (
        FakeDify() as fake,
        backend(
            DifyLlm,
            url=fake.url,
            api_key_env="VOXPIPE_TEST_DIFY_KEY",
            inputs={"tone": "friendly"},
            system_prompt_input="persona",
        ) as llm,
    ):
        ctx = stage_context()
        first = "".join(await collect(llm.stream(MESSAGES, ctx=ctx)))
        assert first == "You said: what time is it. Message 1."
        conversation = ctx.extra[CONVERSATION_KEY]
        assert conversation in fake.conversations
        history = [*MESSAGES, {"role": "assistant", "content": first}, {"role": "user", "content": "and tomorrow"}]
        second = "".join(await collect(llm.stream(history, ctx=ctx)))
        assert second == "You said: and tomorrow. Message 2."
        bodies = [r.json() for r in fake.requests]
        assert bodies[0] == {
            "inputs": {"tone": "friendly", "persona": "Be brief."},
            "query": "what time is it",
            "response_mode": "streaming",
            "conversation_id": "",
            "user": "voxpipe-s1",
            "auto_generate_name": False,
            "files": [],
        }
        assert bodies[1]["conversation_id"] == conversation
        assert bodies[1]["query"] == "and tomorrow"  # Dify holds the history itself
        assert all(r.headers["authorization"] == "Bearer app-fake-key" for r in fake.requests)
        other = stage_context(session_id="s2")
        assert "".join(await collect(llm.stream(MESSAGES, ctx=other))) == "You said: what time is it. Message 1."
        assert other.extra[CONVERSATION_KEY] != conversation


async def test_dify_error_event_and_bad_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXPIPE_TEST_DIFY_KEY", "app-wrong")
    async with FakeDify() as fake, backend(DifyLlm, url=fake.url, api_key_env="VOXPIPE_TEST_DIFY_KEY") as llm:
        with pytest.raises(UpstreamError) as err:
            await collect(llm.stream(MESSAGES, ctx=stage_context()))
        assert err.value.code == "upstream_bad_response"
        assert "Access token is invalid" in err.value.message
        monkeypatch.setenv("VOXPIPE_TEST_DIFY_KEY", "app-fake-key")
        fake.fail_next("error")
        with pytest.raises(UpstreamError) as err:
            await collect(llm.stream(MESSAGES, ctx=stage_context()))
        assert err.value.code == "upstream_bad_response"
        assert "model quota exceeded" in err.value.message


async def test_dify_cut_off_reply_closes_the_stream_and_stops_the_task(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXPIPE_TEST_DIFY_KEY", "app-fake-key")
    async with FakeDify() as fake, backend(DifyLlm, url=fake.url, api_key_env="VOXPIPE_TEST_DIFY_KEY") as llm:
        fake.default, fake.drip_s = "slow", 0.2
        stream = llm.stream([{"role": "user", "content": "tell me a long story please"}], ctx=stage_context())
        assert await anext(stream) == "You"
        await stream.aclose()
        assert await fake.wait_disconnect(0, timeout_s=1.0) < 0.5
        task_id = next(iter(fake.tasks))
        await asyncio.wait_for(fake.tasks[task_id].wait(), 2.0)  # the stop request reached Dify
        assert fake.stopped == [(task_id, "voxpipe-s1")]
        assert fake.requests[1].path == f"/v1/chat-messages/{task_id}/stop"


# ---------------------------------------------------------------------- OpenAI-compatible transcription


async def test_openai_asr_uploads_a_wav_and_reads_the_text() -> None:
    async with FakeOpenAi() as fake, backend(OpenAiAsr, url=fake.url, prompt="voxpipe") as asr:
        pcm = tone_pcm(5, 16000)  # 500 ms
        text = await asr.transcribe(pcm, rate_hz=16000, final=True, ctx=stage_context())
        assert text == "hello from the fake (500 ms at 16000 Hz, 16 bit x1)"
        fields, files = fake.requests[0].form()
        assert fields == {"model": "whisper-1", "response_format": "json", "language": "en", "prompt": "voxpipe"}
        filename, data = files["file"]
        assert filename == "speech.wav"
        with wave.open(io.BytesIO(data)) as w:
            assert w.readframes(w.getnframes()) == pcm


async def test_openai_asr_partials_are_off_by_default() -> None:
    async with FakeOpenAi() as fake:
        async with backend(OpenAiAsr, url=fake.url) as asr:
            assert await asr.transcribe(tone_pcm(3, 16000), rate_hz=16000, final=False, ctx=stage_context()) == ""
            assert fake.requests == []
        async with backend(OpenAiAsr, url=fake.url, partials=True) as asr:
            assert "300 ms" in await asr.transcribe(tone_pcm(3, 16000), rate_hz=16000, final=False, ctx=stage_context())


@pytest.mark.parametrize("fault", ["malformed", "midway"])
async def test_openai_asr_broken_answers(fault: str) -> None:
    async with FakeOpenAi() as fake, backend(OpenAiAsr, url=fake.url, retries=1) as asr:
        fake.fail_next(fault, fault)
        with pytest.raises(UpstreamError) as err:
            await asr.transcribe(tone_pcm(1, 16000), rate_hz=16000, final=True, ctx=stage_context())
        assert err.value.code == ("upstream_bad_response" if fault == "malformed" else "upstream_unavailable")
        assert len(fake.requests) == 2  # nothing was handed on: retried once


# ---------------------------------------------------------------------- OpenAI-compatible speech


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
async def test_openai_tts_streams_pcm16(fmt: str) -> None:
    async with FakeOpenAi() as fake, backend(OpenAiTts, url=fake.url, response_format=fmt, speed=1.25) as tts:
        assert tts.rate_hz == 24000
        pieces = await collect(tts.synthesize("three short words", rate_hz=24000, ctx=stage_context(voice="nova")))
        assert all(len(p) % 2 == 0 for p in pieces)  # whole samples although the body came in odd pieces
        assert b"".join(pieces) == tone_pcm(3, 24000)
        assert len(pieces) > 1  # streamed, not buffered whole
        assert fake.requests[0].json() == {
            "model": "tts-1",
            "input": "three short words",
            "voice": "nova",
            "response_format": fmt,
            "speed": 1.25,
        }


async def test_openai_tts_adopts_the_wav_rate_and_resamples_that_clause() -> None:
    async with FakeOpenAi() as fake, backend(OpenAiTts, url=fake.url, response_format="wav") as tts:
        fake.speech_rate_hz = 16000
        pcm = b"".join(await collect(tts.synthesize("two words", rate_hz=24000, ctx=stage_context())))
        assert tts.rate_hz == 16000  # the next clause is asked at the service's rate
        assert abs(len(pcm) / 2 - 2 * 2400) < 200  # 200 ms at 24 kHz
        again = b"".join(await collect(tts.synthesize("two words", rate_hz=16000, ctx=stage_context())))
        assert again == tone_pcm(2, 16000)


async def test_openai_tts_malformed_wav() -> None:
    async with FakeOpenAi() as fake, backend(OpenAiTts, url=fake.url, response_format="wav", retries=0) as tts:
        fake.fail_next("malformed")
        with pytest.raises(UpstreamError, match="not a WAV body") as err:
            await collect(tts.synthesize("hi there", rate_hz=24000, ctx=stage_context()))
        assert err.value.code == "upstream_bad_response"


# ---------------------------------------------------------------------- GPT-SoVITS


SOVITS = {"ref_audio_path": "refs/alice.wav", "prompt_text": "This is Alice.", "prompt_lang": "en"}


@pytest.mark.parametrize(("media", "streaming"), [("wav", True), ("raw", True), ("wav", False), ("raw", 3)])
async def test_gpt_sovits_tts(media: str, streaming: bool | int) -> None:
    async with (
        FakeGptSovits() as fake,
        backend(GptSovitsTts, url=fake.url, media_type=media, streaming_mode=streaming, top_k=5, **SOVITS) as tts,
    ):
        pieces = await collect(tts.synthesize("four words right here", rate_hz=32000, ctx=stage_context()))
        assert b"".join(pieces) == tone_pcm(4, 32000)
        assert tts.rate_hz == 32000
        assert fake.requests[0].json() == {
            "text": "four words right here",
            "text_lang": "en",
            "ref_audio_path": "refs/alice.wav",
            "prompt_text": "This is Alice.",
            "prompt_lang": "en",
            "text_split_method": "cut5",
            "speed_factor": 1.0,
            "media_type": media,
            "streaming_mode": streaming,
            "top_k": 5,
        }


async def test_gpt_sovits_rejects_a_language_with_400() -> None:
    async with FakeGptSovits() as fake, backend(GptSovitsTts, url=fake.url, text_lang="xx", **SOVITS) as tts:
        with pytest.raises(UpstreamError) as err:
            await collect(tts.synthesize("hello", rate_hz=32000, ctx=stage_context()))
        assert err.value.code == "upstream_bad_response"
        assert "text_lang: xx is not supported" in err.value.message
        assert len(fake.requests) == 1


async def test_gpt_sovits_learns_a_v3_models_rate_from_the_header() -> None:
    async with FakeGptSovits(rate_hz=24000) as fake, backend(GptSovitsTts, url=fake.url, **SOVITS) as tts:
        await collect(tts.synthesize("one two", rate_hz=32000, ctx=stage_context()))
        assert tts.rate_hz == 24000
        assert b"".join(await collect(tts.synthesize("one two", rate_hz=24000, ctx=stage_context()))) == tone_pcm(
            2, 24000
        )


def test_gpt_sovits_options_are_checked() -> None:
    entry = {"engine": "gpt_sovits", "url": "http://h:9880", **SOVITS}
    build_pipeline([{**entry, "streaming_mode": 3}])
    with pytest.raises(ConfigError, match=r"pipeline\[0\]\.streaming_mode"):
        build_pipeline([{**entry, "streaming_mode": 5}])
    with pytest.raises(ConfigError, match=r"pipeline\[0\]\.ref_audio_path: required"):
        build_pipeline([{"engine": "gpt_sovits", "url": "http://h:9880"}])
    with pytest.raises(ConfigError, match=r"pipeline\[0\]\.media_type: 'ogg' is not one of"):
        build_pipeline([{**entry, "media_type": "ogg"}])


# ---------------------------------------------------------------------- WAV reading


def test_wav_reader_any_split_of_a_streamed_header() -> None:
    pcm = tone_pcm(1, 16000)[:1000]
    for size in (0, 0xFFFFFFFF):
        body = wav_header(16000, size) + pcm
        for cut in range(len(body)):
            reader = WavStreamReader()
            out = reader.feed(body[:cut]) + reader.feed(body[cut:])
            assert out == pcm
            assert reader.rate_hz == 16000


def test_wav_reader_respects_a_real_size_and_skips_other_chunks() -> None:
    pcm = b"\x01\x00\x02\x00"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 22050, 44100, 2, 16)
    body = b"RIFF\x00\x00\x00\x00WAVE" + fmt + b"LIST\x03\x00\x00\x00abc\x00" + b"data" + struct.pack("<I", 4)
    body += pcm + b"junk after the data"
    reader = WavStreamReader()
    assert reader.feed(body) == pcm
    assert reader.rate_hz == 22050
    assert wav_bytes(pcm, 8000)[:4] == b"RIFF"


def test_wav_reader_refuses_stereo() -> None:
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 2, 16000, 64000, 4, 16)
    with pytest.raises(UpstreamError, match="not PCM16 mono"):
        WavStreamReader().feed(b"RIFF\x00\x00\x00\x00WAVE" + fmt + b"data\x00\x00\x00\x00")


# ---------------------------------------------------------------------- bodies that never end (issue 13 #7)

BOUNDED = {"retries": 0, "total_timeout_s": 3.0}  # without a cap, each case would read for 3 s and time out


async def fails_fast(fake: Any, call: Any, code: str) -> UpstreamError:
    """``call`` fails with ``code`` well before the total timeout, having stopped reading the endless body."""
    started = time.monotonic()
    with pytest.raises(UpstreamError) as err:
        await call
    elapsed_s = time.monotonic() - started
    assert err.value.code == code, err.value.message
    assert elapsed_s < 1.5, f"read the endless body for {elapsed_s:.1f} s"
    await fake.wait_disconnect(-1)
    assert fake.exchanges[-1].sent_bytes < 16 << 20  # what the fake got out before the client left
    return err.value


@pytest.mark.parametrize(("cls", "fake_cls"), [(OpenAiLlm, FakeOpenAi), (OllamaLlm, FakeOllama)], ids=["sse", "ndjson"])
async def test_an_endless_line_is_a_bad_response(cls: Any, fake_cls: Any) -> None:
    async with fake_cls() as fake, backend(cls, url=fake.url, model="llama3.2", **BOUNDED) as llm:
        fake.fail_next("endless_line")
        err = await fails_fast(fake, collect(llm.stream(MESSAGES, ctx=stage_context())), "upstream_bad_response")
        assert "line over" in err.message


async def test_an_endless_error_body_is_read_only_up_to_its_cap() -> None:
    async with FakeOpenAi() as fake, backend(OpenAiLlm, url=fake.url, model="m", **BOUNDED) as llm:
        fake.fail_next("endless_error_body")
        err = await fails_fast(fake, collect(llm.stream(MESSAGES, ctx=stage_context())), "upstream_unavailable")
        assert "HTTP 503" in err.message


async def test_an_endless_transcription_body_is_a_bad_response() -> None:
    async with FakeOpenAi() as fake, backend(OpenAiAsr, url=fake.url, **BOUNDED) as asr:
        fake.fail_next("endless_body")
        call = asr.transcribe(tone_pcm(1, 16000), rate_hz=16000, final=True, ctx=stage_context())
        err = await fails_fast(fake, call, "upstream_bad_response")
        assert "body over" in err.message


async def test_a_wav_chunk_that_says_4_gib_is_a_bad_response() -> None:
    async with FakeOpenAi() as fake, backend(OpenAiTts, url=fake.url, response_format="wav", **BOUNDED) as tts:
        fake.fail_next("wav_huge_chunk")
        call = collect(tts.synthesize("hi there", rate_hz=24000, ctx=stage_context()))
        err = await fails_fast(fake, call, "upstream_bad_response")
        assert "WAV header" in err.message


async def test_a_wav_rate_of_1_hz_is_a_bad_response() -> None:
    async with FakeOpenAi() as fake, backend(OpenAiTts, url=fake.url, response_format="wav", **BOUNDED) as tts:
        fake.fail_next("wav_1hz")
        with pytest.raises(UpstreamError, match="1 Hz") as err:
            await collect(tts.synthesize("hi there", rate_hz=24000, ctx=stage_context()))
        assert err.value.code == "upstream_bad_response"
        assert tts.rate_hz == 24000  # not learned


def test_wav_reader_caps_its_header_and_checks_the_rate() -> None:
    reader = WavStreamReader()
    with pytest.raises(UpstreamError, match="WAV header"):
        reader.feed(b"RIFF\xff\xff\xff\xffWAVE" + b"LIST" + struct.pack("<I", 1 << 20) + b"\x00" * 70000)
    for rate in (1, 3999, 400_000):
        with pytest.raises(UpstreamError, match=f"{rate} Hz"):
            WavStreamReader().feed(wav_header(rate, 0))
    assert WavStreamReader().feed(wav_header(8000, 0) + b"\x01\x00") == b"\x01\x00"


async def test_body_lines_follow_every_line_ending_and_cap_the_length() -> None:
    stream = httpx.ByteStream(b"a\r\nb\nc\rd\r")
    pieces = [b"da", b"ta: 1\r", b"\ndata: 2\n", b"\n", b"x" * 10]
    body = httpx.Response(200, stream=_Pieces(pieces))
    assert [line async for line in body_lines(body)] == ["data: 1", "data: 2", "", "x" * 10]
    assert [line async for line in body_lines(httpx.Response(200, stream=stream))] == ["a", "b", "c", "d"]
    with pytest.raises(UpstreamError, match="line over 8 bytes"):
        await collect(body_lines(httpx.Response(200, stream=_Pieces([b"12345", b"6789"])), max_line_bytes=8))


class _Pieces(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


# ---------------------------------------------------------------------- retries and side effects (issue 13 #8)


async def test_dify_agent_that_ran_a_tool_then_dropped_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dify is not idempotent: an agent that ran a tool (``agent_thought``) before the connection dropped must not
    run it again, and a retry would start another conversation. One POST, not three."""
    monkeypatch.setenv("VOXPIPE_TEST_DIFY_KEY", "app-fake-key")
    async with (
        FakeDify() as fake,
        backend(DifyLlm, url=fake.url, api_key_env="VOXPIPE_TEST_DIFY_KEY", retries=2) as llm,
    ):
        fake.fail_next("agent_thought_drop")
        with pytest.raises(UpstreamError) as err:
            await collect(llm.stream(MESSAGES, ctx=stage_context()))
        assert err.value.code == "upstream_unavailable"
        assert [r.path for r in fake.requests] == ["/v1/chat-messages"]
        assert fake.tool_runs == 1
        assert len(fake.conversations) == 1


async def test_dify_error_event_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOXPIPE_TEST_DIFY_KEY", "app-fake-key")
    async with (
        FakeDify() as fake,
        backend(DifyLlm, url=fake.url, api_key_env="VOXPIPE_TEST_DIFY_KEY", retries=2) as llm,
    ):
        fake.fail_next("error_first")  # before any answer was handed on
        with pytest.raises(UpstreamError, match="model quota exceeded"):
            await collect(llm.stream(MESSAGES, ctx=stage_context()))
        assert len(fake.requests) == 1


@pytest.mark.parametrize("fault", ["http_503", "http_429", "down"])
async def test_dify_is_retried_when_the_request_cannot_have_been_acted_on(
    fault: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connection refused, 503 and 429 say the service did nothing: another attempt is safe."""
    monkeypatch.setenv("VOXPIPE_TEST_DIFY_KEY", "app-fake-key")
    async with FakeDify() as a, FakeDify() as b:
        endpoints = [{"url": a.url}, {"url": b.url}]
        async with backend(DifyLlm, endpoints=endpoints, api_key_env="VOXPIPE_TEST_DIFY_KEY", retries=2) as llm:
            if fault == "down":
                await a.down()
            else:
                a.fail_next(fault)
            assert "".join(await collect(llm.stream(MESSAGES, ctx=stage_context()))).startswith("You said")
            assert len(a.requests) == (0 if fault == "down" else 1)
            assert len(b.requests) == 1


@pytest.mark.parametrize("fault", ["hang", "malformed", "refuse", "http_500"])
async def test_idempotent_backends_still_retry_before_the_first_item(fault: str) -> None:
    async with FakeOpenAi() as fake, backend(OpenAiLlm, url=fake.url, model="m", retries=1, read_timeout_s=0.3) as llm:
        fake.fail_next(fault)
        assert "".join(await collect(llm.stream(MESSAGES, ctx=stage_context()))) == "You said: what time is it"
        assert len(fake.requests) == 2

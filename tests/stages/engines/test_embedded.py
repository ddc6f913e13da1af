"""Each embedded backend alone, on real models: webrtcvad, faster-whisper, llama.cpp, Piper.

Speech for the tests is made at test time by the Piper voice itself. Each model is loaded once for
the module. Marked ``models``; skipped with the reason printed when a model package is missing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from tests.embedded import require_models, words

require_models()

from faster_whisper.transcribe import get_compression_ratio  # noqa: E402

from stages.base import StageContext  # noqa: E402
from stages.engines.llama import LlamaLlm, fit_messages  # noqa: E402
from stages.engines.piper_tts import PiperTts  # noqa: E402
from stages.engines.webrtc_vad import WebrtcVad  # noqa: E402
from stages.engines.whisper import COMPRESSION_RATIO_LIMIT, WhisperAsr, repeats  # noqa: E402
from stages.items import AudioIn, SpeechAudio, TurnDone, VadEvent  # noqa: E402
from stages.resample import resample  # noqa: E402
from stages.vad import Options as VadOptions  # noqa: E402
from stages.vad import VadStage  # noqa: E402
from tests.client import noise, silence  # noqa: E402
from tests.stage_context import stage_context  # noqa: E402
from tests.waiting import wait_until  # noqa: E402
from vocab.errors import StageError  # noqa: E402

pytestmark = pytest.mark.models

SENTENCE = "Please turn on the lights in the kitchen."


def context(**overrides: Any) -> StageContext:
    return stage_context(system_prompt="You are a helpful voice assistant. Answer in one short sentence.", **overrides)


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperTts]:
    backend = PiperTts(PiperTts.Options())
    backend.load(print)
    yield backend
    backend.executor.shutdown()


@pytest.fixture(scope="module")
def whisper() -> Iterator[WhisperAsr]:
    backend = WhisperAsr(WhisperAsr.Options())
    backend.load(print)
    yield backend
    backend.executor.shutdown()


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaLlm]:
    backend = LlamaLlm(LlamaLlm.Options(max_tokens=48, max_waiting=1))
    backend.load(print)
    yield backend
    backend.executor.shutdown()


@pytest.fixture(scope="module")
def speech_16k(piper: PiperTts) -> bytes:
    """The sentence spoken by Piper, resampled to 16 kHz, with 200 ms of silence around it."""
    assert piper.rate_hz is not None
    return silence(200) + resample(piper.synthesize_all(SENTENCE), piper.rate_hz, 16000) + silence(200)


def voiced_share(detect: Any, pcm: bytes, frame_bytes: int) -> float:
    frames = [pcm[i : i + frame_bytes] for i in range(0, len(pcm) - frame_bytes + 1, frame_bytes)]
    return sum(bool(detect(frame)) for frame in frames) / len(frames)


# ---------------------------------------------------------------- piper


async def test_piper_speaks_non_silent_pcm_at_the_voice_rate(piper: PiperTts) -> None:
    assert piper.rate_hz == 22050  # from the voice's config file
    pieces = [pcm async for pcm in piper.synthesize("Hello there. How are you today?", rate_hz=22050, ctx=context())]
    assert len(pieces) == 2  # one piece per sentence, each handed on when ready
    samples = np.frombuffer(b"".join(pieces), dtype="<i2")
    assert 1.0 < samples.size / 22050 < 4.0
    assert np.abs(samples).max() > 10000  # peak-normalised speech, not silence


async def test_closing_piper_stops_before_the_next_sentence(piper: PiperTts) -> None:
    text = " ".join(f"This is sentence number {n}." for n in range(1, 9))
    stream = piper.synthesize(text, rate_hz=22050, ctx=context())
    first = await anext(stream)
    assert first
    closed_at = time.monotonic()
    await stream.aclose()
    await piper.executor.run(lambda: None)  # runs once the synthesis worker has returned
    assert time.monotonic() - closed_at < 1.0
    assert piper.executor.in_use == 0


# ---------------------------------------------------------------- webrtcvad


def test_webrtcvad_tells_speech_from_silence_and_steady_noise(speech_16k: bytes) -> None:
    vad = WebrtcVad(WebrtcVad.Options(aggressiveness=2, frame_ms=20))
    assert vad.supports_rate(16000)
    assert vad.supports_rate(48000)
    assert not vad.supports_rate(24000)
    frame_bytes = 640
    spoken = speech_16k[6400:-6400]  # without the silence around it
    assert voiced_share(vad.new_detector(16000), spoken, frame_bytes) > 0.8
    assert voiced_share(vad.new_detector(16000), silence(2000), frame_bytes) == 0.0
    room_noise = noise(3000, amplitude=0.05)  # steady background hiss, about -35 dBFS
    assert voiced_share(vad.new_detector(16000), room_noise, frame_bytes) < 0.1


async def test_the_vad_stage_cuts_an_utterance_from_24_khz_audio(speech_16k: bytes) -> None:
    """24 kHz is not a webrtcvad rate: the stage resamples it to the backend's 16 kHz."""
    backend = WebrtcVad(WebrtcVad.Options())
    stage = VadStage(VadOptions(start_ms=60, end_ms=300), backend, context(in_rate_hz=24000))
    pcm = resample(speech_16k + silence(500), 16000, 24000)
    out: list[Any] = []

    class Collect:
        async def emit(self, item: Any) -> None:
            out.append(item)

    step = 24000 * 20 // 1000 * 2
    for i in range(0, len(pcm), step):
        await stage.process(AudioIn(pcm[i : i + step], 24000, float(i)), Collect())
    events = [item.event for item in out if isinstance(item, VadEvent)]
    assert events == ["speech_start", "speech_end"]
    assert isinstance(out[-1], TurnDone)
    speech = b"".join(item.pcm for item in out if isinstance(item, SpeechAudio))
    assert all(item.rate_hz == 16000 for item in out if isinstance(item, SpeechAudio))
    assert 1.5 < len(speech) / 32000 < len(speech_16k) / 32000 + 0.6  # the sentence plus pre-roll and end_ms


# ---------------------------------------------------------------- whisper


async def test_whisper_transcribes_piper_speech(whisper: WhisperAsr, speech_16k: bytes) -> None:
    heard = await whisper.transcribe(speech_16k, rate_hz=16000, final=True, ctx=context())
    assert words(heard.text) == words(SENTENCE)
    assert heard.logprob is not None
    assert -0.6 < heard.logprob < 0  # sure of clear speech


async def test_whisper_partial_of_the_first_half(whisper: WhisperAsr, speech_16k: bytes) -> None:
    half = speech_16k[: len(speech_16k) // 2 // 2 * 2]
    heard = words((await whisper.transcribe(half, rate_hz=16000, final=False, ctx=context())).text)
    assert heard
    assert heard[0] == "please"
    assert len(heard) < len(words(SENTENCE))


async def test_whisper_short_window_matches_the_stock_30_s_window(speech_16k: bytes) -> None:
    stock = WhisperAsr(WhisperAsr.Options(window_s=30, warm_up=False))
    stock.load(print)
    try:
        heard = await stock.transcribe(speech_16k, rate_hz=16000, final=True, ctx=context())
    finally:
        stock.executor.shutdown()
    assert words(heard.text) == words(SENTENCE)
    assert heard.logprob is not None
    assert heard.logprob < 0


def test_a_run_of_words_heard_twice_is_a_loop() -> None:
    # the speculative final of bench/voice_to_voice.py turn 4 (2026-12-02): the final transcript, and a 1.2 s wait
    looped = "Tell me something interesting about the ocean. Tell me something interesting about the ocean. Tell"
    assert repeats(looped)
    assert get_compression_ratio(looped) < COMPRESSION_RATIO_LIMIT  # what the stock test alone let through
    assert not repeats("What is the tallest mountain in the world?")
    assert not repeats("I think, I think so.")  # a short stammer is speech, not a loop


async def test_whisper_hears_nothing_in_silence_and_refuses_other_rates(whisper: WhisperAsr) -> None:
    assert (await whisper.transcribe(silence(1000), rate_hz=16000, final=True, ctx=context())).text == ""
    with pytest.raises(StageError):
        await whisper.transcribe(silence(1000, 8000), rate_hz=8000, final=True, ctx=context())


# ---------------------------------------------------------------- llama.cpp


async def test_llama_streams_a_reply(llama: LlamaLlm) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful voice assistant. Answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    deltas = [delta async for delta in llama.stream(messages, ctx=context())]
    assert len(deltas) > 1  # streamed, not one block
    assert "".join(deltas).strip()


async def test_closing_the_llama_stream_ends_the_worker_within_a_second(llama: LlamaLlm) -> None:
    messages = [{"role": "user", "content": "Tell me a very long story about a dragon and a knight."}]
    stream = llama.stream(messages, ctx=context())
    for _ in range(3):
        await anext(stream)
    worker = [t for t in threading.enumerate() if t.name.startswith("llama")]
    closed_at = time.monotonic()
    await stream.aclose()  # barge-in
    await llama.executor.run(lambda: None)  # one worker: this runs only after the generation returned
    freed_ms = (time.monotonic() - closed_at) * 1000
    print(f"llama worker free {freed_ms:.0f} ms after the stream was closed")
    assert freed_ms < 1000
    assert llama.executor.in_use == 0
    assert worker  # the generation did run on the executor's thread, not on the event loop


async def test_one_generation_at_a_time_and_a_full_line_is_busy(llama: LlamaLlm) -> None:
    """max_waiting=1 in this fixture: one generation runs, one waits, a third fails at once with ``busy``."""
    messages = [{"role": "user", "content": "Count from one to twenty."}]
    first = llama.stream(messages, ctx=context())
    await anext(first)
    second = llama.stream(messages, ctx=context())
    waiting = asyncio.ensure_future(anext(second))
    await wait_until(lambda: llama.executor.in_use == 2)  # in line behind the first: one context, one thread
    assert not waiting.done()
    with pytest.raises(StageError) as caught:
        await anext(llama.stream(messages, ctx=context()))
    assert caught.value.code == "busy"
    await first.aclose()
    assert await asyncio.wait_for(waiting, 10)  # the second one runs once the first let go
    await second.aclose()
    await llama.executor.run(lambda: None)
    assert llama.executor.in_use == 0


LONG_REPLY = [{"role": "user", "content": "Tell me a very long story about a dragon and a knight."}]


async def test_a_reply_does_not_hold_the_model_while_its_reader_waits() -> None:
    """A session whose TTS and playout are behind stops reading; its reply is still generated whole
    (at most max_tokens deltas), and the model goes on to the next session's prompt."""
    llama = LlamaLlm(LlamaLlm.Options(max_tokens=120, max_waiting=2, temperature=0.0, warm_up=False))
    llama.load(lambda _text: None)
    try:
        slow_reader = llama.stream(LONG_REPLY, ctx=context())
        await anext(slow_reader)  # then it reads nothing more for now
        other = llama.stream(LONG_REPLY, ctx=context())
        assert await asyncio.wait_for(anext(other), 30)  # the first reply (> 64 tokens) did not block the worker
        await other.aclose()
        rest = [delta async for delta in slow_reader]
        assert len(rest) > 64  # all of it was waiting, nothing lost
    finally:
        await llama.aclose()


async def test_two_copies_of_the_model_answer_two_sessions_side_by_side() -> None:
    llama = LlamaLlm(LlamaLlm.Options(max_tokens=120, max_waiting=2, instances=2, temperature=0.0, warm_up=False))
    llama.load(lambda _text: None)
    try:
        first = llama.stream(LONG_REPLY, ctx=context())
        await anext(first)
        second = llama.stream(LONG_REPLY, ctx=context())
        assert await asyncio.wait_for(anext(second), 30)
        assert llama.executor.in_use == 2  # the first reply is still being generated: both run at once
        await first.aclose()
        await second.aclose()
    finally:
        await llama.aclose()


def test_history_is_cut_to_the_token_budget(llama: LlamaLlm) -> None:
    system = {"role": "system", "content": "Be brief."}
    history = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " * 40} for i in range(50)]
    kept = fit_messages([system, *history], llama.count_tokens, 400)
    assert kept[0] == system
    assert kept[-1] == history[-1]
    assert 1 < len(kept) < 10
    assert sum(llama.count_tokens(m["content"]) for m in kept) <= 400

"""pipecat 1.14 voice agent on voxpipe's embedded models, for ``voice_to_voice.py``/``capacity.py --system pipecat``.

Runs in bench/.venv-pipecat. A FastAPI app serves ``/ws``; each connection is one pipecat bot, pipecat's
usual shape: FastAPIWebsocketTransport input -> WhisperSTTService -> user aggregator (SileroVADAnalyzer,
default turn strategies) -> LLM -> PiperTTSService -> transport output -> assistant aggregator, run by a
PipelineWorker with its defaults. ``VoxWire`` (a FrameSerializer plus an observer) speaks the subset of
voxpipe's wire that ``bench.voice_to_voice.play_turn`` reads, so the same client drives both servers.
pipecat has no llama.cpp service: ``LlamaCppLLM`` is the thinnest LLMService around ``llama_cpp.Llama``.
Models load once per process and are shared by every session (as in voxpipe); nothing is downloaded.

    bench/.venv-pipecat/bin/python bench/pc_voice.py --port P --whisper DIR --gguf FILE --voice FILE.onnx
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may be fetched: every model comes from a path

import msgpack
import numpy as np
import uvicorn
from fastapi import FastAPI, WebSocket
from loguru import logger

logger.remove()
logger.add(sys.stderr, level=os.environ.get("PC_VOICE_LOG", "WARNING"))

from pipecat.audio.vad.silero import SileroVADAnalyzer  # noqa: E402
from pipecat.audio.vad.vad_analyzer import VADParams  # noqa: E402
from pipecat.frames.frames import (  # noqa: E402
    BotStoppedSpeakingFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed  # noqa: E402
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import (  # noqa: E402
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection  # noqa: E402
from pipecat.serializers.base_serializer import FrameSerializer  # noqa: E402
from pipecat.services.llm_service import LLMService  # noqa: E402
from pipecat.services.piper import tts as piper_tts  # noqa: E402
from pipecat.services.whisper import stt as whisper_stt  # noqa: E402
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

RATE_HZ = 16000  # audio in and out, as the bench's hello asks
_sessions = itertools.count(1)


# ---------------------------------------------------------------- models: loaded once, shared by every session


def share_models(whisper_threads: int, beam_size: int | None) -> None:
    """Make pipecat's Whisper and Piper services reuse one loaded model each instead of loading per session.

    ``WhisperSTTService`` builds ``WhisperModel(name, device, compute_type)`` and calls ``transcribe`` with
    faster-whisper's defaults (beam 5, CTranslate2's thread count); it has no option for either, so both
    stay stock unless ``whisper_threads``/``beam_size`` say otherwise. ``PiperTTSService`` calls
    ``PiperVoice.load(path)``, unchanged but cached.
    """
    make_whisper = whisper_stt.WhisperModel
    voice_class = piper_tts.PiperVoice
    whispers: dict[str, Any] = {}
    voices: dict[str, Any] = {}

    def whisper_model(name: str, device: str = "cpu", compute_type: str = "int8") -> Any:
        if name not in whispers:
            model = make_whisper(name, device=device, compute_type=compute_type, cpu_threads=whisper_threads)
            if beam_size is not None:
                model.transcribe = functools.partial(model.transcribe, beam_size=beam_size)
            whispers[name] = model
        return whispers[name]

    class SharedPiperVoice:
        @staticmethod
        def load(path: str | Path, use_cuda: bool = False) -> Any:
            if str(path) not in voices:
                voices[str(path)] = voice_class.load(path, use_cuda=use_cuda)
            return voices[str(path)]

    whisper_stt.WhisperModel = whisper_model  # type: ignore[assignment]
    piper_tts.PiperVoice = SharedPiperVoice  # type: ignore[assignment,misc]


class LlamaCppLLM(LLMService):
    """The thinnest pipecat LLM service around llama.cpp: one shared ``Llama``, one generation at a time
    (a llama.cpp context is not thread-safe), tokens streamed as ``LLMTextFrame`` between the full-response
    start and end frames; the blocking generation runs in a one-thread executor, off the event loop."""

    def __init__(self, llama: Any, executor: ThreadPoolExecutor, completion: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._llama = llama
        self._executor = executor
        self._completion = completion

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, LLMContextFrame):
            await self.push_frame(frame, direction)
            return
        await self.push_frame(LLMFullResponseStartFrame())
        try:
            async for delta in self._stream(chat_messages(frame.context)):
                await self._push_llm_text(delta)
        except Exception as exc:  # reported in the pipeline, as pipecat's services do
            await self.push_error(error_msg=f"llama.cpp failed: {exc}", exception=exc)
        finally:
            await self.push_frame(LLMFullResponseEndFrame())

    async def _stream(self, messages: list[dict[str, str]]) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def generate() -> None:
            try:
                stream = self._llama.create_chat_completion(messages=messages, stream=True, **self._completion)
                try:
                    for chunk in stream:
                        if stop.is_set():
                            break
                        delta = chunk["choices"][0]["delta"].get("content")
                        if delta:
                            loop.call_soon_threadsafe(deltas.put_nowait, delta)
                finally:
                    stream.close()
                loop.call_soon_threadsafe(deltas.put_nowait, None)
            except BaseException as exc:  # handed to the awaiting coroutine
                loop.call_soon_threadsafe(deltas.put_nowait, exc)

        future = loop.run_in_executor(self._executor, generate)
        try:
            while (item := await deltas.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()  # an interruption cancels this task: the thread stops at its next token
            del future


def chat_messages(context: LLMContext) -> list[dict[str, str]]:
    """The context's standard messages as llama.cpp chat messages (text parts joined)."""
    out = []
    for message in context.get_messages():
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            continue
        content = message.get("content")
        if isinstance(content, list):
            content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
        if isinstance(content, str) and content:
            out.append({"role": str(message["role"]), "content": content})
    return out


# ---------------------------------------------------------------- voxpipe's wire, the subset play_turn reads


class VoxWire(FrameSerializer):
    """msgpack voxpipe wire for one connection: ``hello`` -> ``ready``, ``audio`` in -> InputAudioRawFrame;
    out: audio frames tagged with the turn, and the messages that ``WireEvents`` queues (every one with the
    ``session_seq`` the client checks)."""

    def __init__(self) -> None:
        super().__init__()
        self.session = f"pc-{next(_sessions)}"
        self.turn = 0
        self.audio_seq = 0
        self.seq = 0
        self.send: Callable[[dict[str, Any]], Any] | None = None  # queues a message on the output transport

    async def serialize(self, frame: Frame) -> bytes | None:
        if isinstance(frame, OutputAudioRawFrame):
            msg: dict[str, Any] = {"type": "audio", "stage": "tts", "turn": self.turn, "seq": self.audio_seq}
            msg["data"] = frame.audio
            self.audio_seq += 1
        elif isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            if self.should_ignore_frame(frame) or not isinstance(frame.message, dict) or "type" not in frame.message:
                return None  # RTVI's messages (on by default in PipelineWorker): not part of this wire
            msg = dict(frame.message)
        else:
            return None
        self.seq += 1
        msg["session_seq"] = self.seq
        packed: bytes = msgpack.packb(msg, use_bin_type=True)
        return packed

    async def deserialize(self, data: str | bytes) -> Frame | None:
        if isinstance(data, str):
            return None  # the bench's client speaks msgpack only
        msg = msgpack.unpackb(data, raw=False)
        kind = msg.get("type") if isinstance(msg, dict) else None
        if kind == "audio":
            return InputAudioRawFrame(audio=msg["data"], sample_rate=RATE_HZ, num_channels=1)
        if kind == "hello" and self.send is not None:
            await self.send(
                {
                    "type": "ready",
                    "session": self.session,
                    "protocol": 1,
                    "graph": [{"name": n, "in": i, "out": o} for n, i, o in GRAPH],
                    "audio_in": {"format": "pcm16", "rate": RATE_HZ, "channels": 1},
                    "audio_out": {"format": "pcm16", "rate": RATE_HZ},
                    "resumed": False,
                }
            )
        return None


GRAPH = [("vad", "audio", "speech"), ("asr", "speech", "text"), ("llm", "text", "text"), ("tts", "text", "audio")]


class WireEvents(BaseObserver):
    """Turns pipecat's frames into voxpipe's turn events: a user turn start opens a turn (``vad``
    speech_start), transcripts and LLM text follow tagged with it, and the bot's stopping after the
    LLM's full response ends it (``turn_end``).

    pipecat can end a user turn at a pause inside one sentence ("Good morning, | how are you today?"),
    start answering, then take the rest as a new user turn that interrupts its own reply. The bench's
    client never talks over the agent, so such an interruption is that split, not a barge-in: the new
    user turn joins the open turn (its reply text gets " [cut] "), which ends when the last reply has
    been spoken. The turn's first audio stays the first the client heard."""

    def __init__(self, wire: VoxWire) -> None:
        super().__init__(observe_every_push=False)
        self.wire = wire
        self.heard = ""
        self.reply_turn = 0  # the turn whose reply the LLM is producing or the bot is speaking
        self.llm_done = False
        self.awaiting_reply = False  # after a split: the cut reply's end does not end the turn

    async def on_push_frame(self, data: FramePushed) -> None:
        frame, wire = data.frame, self.wire
        send = wire.send
        if send is None or data.direction != FrameDirection.DOWNSTREAM:
            return  # frames broadcast both ways (user and bot speaking) count once
        if isinstance(frame, UserStartedSpeakingFrame):
            if self.reply_turn:  # the user went on after pipecat ended the turn: the same turn
                self.llm_done, self.awaiting_reply = False, True
                print(f"pc_voice: {wire.session} turn {wire.turn}: split by pipecat's turn end", flush=True)
                await send({"type": "reply", "stage": "llm", "turn": self.reply_turn, "text": " [cut] "})
                return
            wire.turn += 1
            wire.audio_seq = 0
            self.heard = ""
            await send({"type": "vad", "stage": "vad", "event": "speech_start", "turn": wire.turn})
        elif isinstance(frame, UserStoppedSpeakingFrame):
            await send({"type": "vad", "stage": "vad", "event": "speech_end", "turn": wire.turn})
        elif isinstance(frame, TranscriptionFrame):
            self.heard = f"{self.heard} {frame.text}".strip()  # one final per turn: the segments so far
            await send({"type": "transcript", "stage": "asr", "turn": wire.turn, "text": self.heard, "final": True})
        elif isinstance(frame, LLMFullResponseStartFrame):
            self.reply_turn, self.llm_done, self.awaiting_reply = wire.turn, False, False
        elif isinstance(frame, LLMTextFrame):
            await send({"type": "reply", "stage": "llm", "turn": self.reply_turn, "text": frame.text})
        elif isinstance(frame, LLMFullResponseEndFrame):
            self.llm_done = not self.awaiting_reply
        elif isinstance(frame, BotStoppedSpeakingFrame) and self.reply_turn and self.llm_done:
            await send({"type": "turn_end", "turn": self.reply_turn})
            self.reply_turn = 0
        elif isinstance(frame, ErrorFrame):
            await send({"type": "error", "code": "pipecat_error", "message": str(frame.error), "fatal": False})


# ---------------------------------------------------------------- one bot per connection


class Models:
    def __init__(self, args: argparse.Namespace) -> None:
        from llama_cpp import Llama

        share_models(args.whisper_threads, args.beam_size)
        self.args = args
        self.llama = Llama(model_path=args.gguf, n_ctx=args.n_ctx, n_threads=args.n_threads, verbose=False)
        self.llama_executor = ThreadPoolExecutor(1, thread_name_prefix="llama")
        self.completion = {
            "max_tokens": args.max_tokens,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "repeat_penalty": args.repeat_penalty,
        }
        self.voice_dir = Path(args.voice).parent
        self.voice_id = Path(args.voice).name.removesuffix(".onnx")
        # warm up as voxpipe does at load: one decode, one short generation, one synthesis
        self.stt()  # constructing the service loads the shared model
        noise = np.random.default_rng(0).normal(0, 0.01, RATE_HZ).astype(np.float32)
        list(whisper_stt.WhisperModel(args.whisper, device="cpu", compute_type="int8").transcribe(noise)[0])
        self.llama.create_chat_completion(messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
        self.tts()
        list(piper_tts.PiperVoice.load(self.voice_dir / f"{self.voice_id}.onnx").synthesize("Hello."))

    def stt(self) -> Any:
        return whisper_stt.WhisperSTTService(
            device="cpu",
            compute_type="int8",
            settings=whisper_stt.WhisperSTTService.Settings(model=self.args.whisper),
        )

    def tts(self) -> Any:
        return piper_tts.PiperTTSService(
            download_dir=self.voice_dir, settings=piper_tts.PiperTTSService.Settings(voice=self.voice_id)
        )


async def run_bot(websocket: WebSocket, models: Models) -> None:
    args = models.args
    wire = VoxWire()
    transport = FastAPIWebsocketTransport(
        websocket,
        FastAPIWebsocketParams(audio_in_enabled=True, audio_out_enabled=True, add_wav_header=False, serializer=wire),
    )
    output = transport.output()

    async def send(message: dict[str, Any]) -> None:
        await output.queue_frame(OutputTransportMessageUrgentFrame(message=message))

    wire.send = send
    context = LLMContext([{"role": "system", "content": args.system_prompt}])
    vad = SileroVADAnalyzer(params=VADParams(stop_secs=args.stop_secs))
    aggregators = LLMContextAggregatorPair(context, user_params=LLMUserAggregatorParams(vad_analyzer=vad))
    llm = LlamaCppLLM(models.llama, models.llama_executor, models.completion)
    pipeline = Pipeline(
        [transport.input(), models.stt(), aggregators.user(), llm, models.tts(), output, aggregators.assistant()]
    )
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=RATE_HZ, audio_out_sample_rate=RATE_HZ),
        observers=[WireEvents(wire)],
    )

    @transport.event_handler("on_client_disconnected")
    async def _gone(_transport: Any, _ws: Any) -> None:
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    await runner.run()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--whisper", required=True, help="CTranslate2 Whisper folder (voxpipe's tiny.en)")
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--voice", required=True, help="Piper .onnx voice (its .onnx.json beside it)")
    parser.add_argument("--system-prompt", default="You are a helpful assistant. Reply in one short sentence.")
    parser.add_argument("--stop-secs", type=float, default=0.2, help="SileroVADAnalyzer stop_secs")
    parser.add_argument("--whisper-threads", type=int, default=0, help="0: faster-whisper's default, as pipecat")
    parser.add_argument("--beam-size", type=int, default=None, help="default: faster-whisper's (5), as pipecat")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-threads", type=int, default=1)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--repeat-penalty", type=float, default=1.1)
    args = parser.parse_args()

    models = Models(args)
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await run_bot(websocket, models)

    config = uvicorn.Config(app, log_level="warning", ws_max_size=2**20)
    listening = socket.create_server(("127.0.0.1", args.port))  # connections wait in its backlog until served
    print(f"pc_voice: serving ws://127.0.0.1:{args.port}/ws", flush=True)
    asyncio.run(uvicorn.Server(config).serve(sockets=[listening]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Voice-to-voice latency of the real server on its real config, over a real socket.

Starts ``voxpipe serve`` as a child process, then plays N spoken turns into one conversation the way
a microphone would: Piper speaks each question (resampled to 16 kHz), sent in 20 ms frames at real
time, with silence before and after, and silence keeps flowing while the agent answers. Reports the
median and p90 of every stage's first-output time and of voice-to-voice from the server's
``metrics`` messages (ms after the last voiced input frame), the same seen by the client, the
server's CPU% and peak RSS; writes ``bench/results/voice_to_voice-<date>.json`` and prints a table.

    .venv/bin/python bench/voice_to_voice.py --turns 10 [--config config.yaml] [--realtime 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.engines.piper_tts import PiperTts  # noqa: E402
from stages.resample import resample  # noqa: E402
from tests.client import Client, silence  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "Can you recommend a good book?",
    "How many legs does a spider have?",
    "Tell me something interesting about the ocean.",
    "What should I cook for dinner tonight?",
    "Why is the sky blue?",
    "Good morning, how are you today?",
    "What is the tallest mountain in the world?",
    "Turn on the lights in the kitchen.",
    "Do you like music?",
    "What time is it in Tokyo?",
    "Thank you very much.",
]
FRAME_MS = 20
RATE_HZ = 16000
STAGES = ("vad", "asr", "llm", "tts")
SYSTEMS = ("voxpipe", "pipecat")


@dataclass
class TurnResult:
    question: str
    turn: int = 0
    transcript: str = ""
    reply: str = ""
    first_output_ms: dict[str, float] = field(default_factory=dict)
    voice_to_voice_ms: float | None = None
    client_voice_to_voice_ms: float | None = None
    reply_audio_ms: float = 0.0
    outcome: str = ""
    cpu_ms: dict[str, float] = field(default_factory=dict)  # server CPU time of this turn, per engine thread


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """``voxpipe serve`` (or ``command``, which prints a line with "serving" once it listens) in a child
    process, with CPU and memory sampling."""

    def __init__(self, config: Path, port: int, root: Path = ROOT, command: list[str] | None = None) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            command
            or [sys.executable, "-m", "server", "serve", "--config", str(config.resolve()), "--port", str(port)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.log: list[str] = []
        self.drain: asyncio.Future[None] | None = None

    async def ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(self.proc.stdout.readline)
            if not line:
                raise RuntimeError("server exited:\n" + "".join(self.log))
            self.log.append(line)
            print("   server: " + line.rstrip(), flush=True)
            if "serving" in line:
                self.drain = asyncio.get_running_loop().run_in_executor(None, self._drain_output)
                return
        raise TimeoutError("server did not start")

    def _drain_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def server_command(system: str, config: dict[str, Any], port: int, extra: tuple[str, ...] = ()) -> list[str] | None:
    """The child process serving ``system``: None for ``voxpipe serve``; for pipecat, ``bench/pc_voice.py``
    in bench/.venv-pipecat (installed on first use) on voxpipe's models, LLM options, system prompt and
    end-of-speech silence (pipecat's Whisper service has no beam or thread option: those stay pipecat's)."""
    if system == "voxpipe":
        return None
    from bench.run_all import ensure_pipecat_voice_venv
    from stages.engines.llama import LlamaLlm
    from stages.engines.llama import default_model_path as gguf_path
    from stages.engines.piper_tts import PiperTts
    from stages.engines.whisper import default_model_path as whisper_path

    python = ensure_pipecat_voice_venv()
    stage = {e["name"]: e for e in config["pipeline"]}
    vad, asr, llm = stage["vad"], stage["asr"], stage["llm"]
    piper_options = {k: v for k, v in stage["tts"].items() if k in ("model_path", "config_path")}
    defaults = LlamaLlm.Options()
    options = {
        "--whisper": asr.get("model_path") or whisper_path(),
        "--gguf": llm.get("model_path") or gguf_path(),
        "--voice": PiperTts(PiperTts.Options(**piper_options, warm_up=False)).model_path,
        "--system-prompt": config.get("session", {}).get("system_prompt", ""),
        "--stop-secs": vad.get("end_complete_ms", vad.get("end_ms", 200)) / 1000,
        **{f"--{k.replace('_', '-')}": llm.get(k, getattr(defaults, k)) for k in PIPECAT_LLM_OPTIONS},
    }
    return [
        python,
        str(ROOT / "bench" / "pc_voice.py"),
        "--port",
        str(port),
        *(str(x) for kv in options.items() for x in kv),
        *extra,
    ]


PIPECAT_LLM_OPTIONS = ("n_ctx", "n_threads", "max_tokens", "temperature", "top_p", "repeat_penalty")


async def play_turn(
    client: Client, speech: bytes, question: str, timeout_s: float, lead_silence_ms: float = 300.0
) -> TurnResult:
    """Speak ``speech`` at real time after ``lead_silence_ms`` of silence, keep the microphone open
    (silence) until the turn ends."""
    result = TurnResult(question)
    step = RATE_HZ * FRAME_MS // 1000 * 2
    speech_done = asyncio.Event()
    speech_end_at = 0.0

    async def microphone() -> None:
        nonlocal speech_end_at
        start = time.monotonic()
        sent = 0
        for pcm in (silence(lead_silence_ms), speech):
            for i in range(0, len(pcm), step):
                await client.send({"type": "audio", "data": pcm[i : i + step]})
                sent += 1
                await asyncio.sleep(max(0.0, start + sent * FRAME_MS / 1000 - time.monotonic()))
        speech_end_at = time.monotonic()
        speech_done.set()
        while True:  # the microphone stays open: silence while the agent answers
            await client.send({"type": "audio", "data": silence(FRAME_MS)})
            sent += 1
            await asyncio.sleep(max(0.0, start + sent * FRAME_MS / 1000 - time.monotonic()))

    mic = asyncio.create_task(microphone())
    first_audio_at: float | None = None
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            msg = await client.recv(max(0.1, deadline - time.monotonic()))
            kind = msg["type"]
            if kind == "vad" and msg["event"] == "speech_start" and not result.turn:
                result.turn = msg["turn"]
            if not result.turn or msg.get("turn") != result.turn:
                continue
            if kind == "transcript" and msg["final"]:
                result.transcript = msg["text"]
            elif kind == "reply":
                result.reply += msg["text"]
            elif kind == "audio":
                if first_audio_at is None:
                    first_audio_at = msg["_at"]
                result.reply_audio_ms += len(msg["data"]) * 500 / client.ready["audio_out"]["rate"]
            elif kind == "metrics":
                result.first_output_ms = msg.get("first_output_ms", {})
                result.voice_to_voice_ms = msg.get("voice_to_voice_ms")
            elif kind in ("turn_end", "interrupted", "error"):
                result.outcome = kind if kind != "error" else f"error {msg.get('code')}"
                if kind != "error":
                    break
    finally:
        mic.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mic
    if first_audio_at is not None and speech_done.is_set():
        result.client_voice_to_voice_ms = round((first_audio_at - speech_end_at) * 1000, 1)
    return result


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "median": round(statistics.median(values), 1),
        "p90": round(float(np.percentile(values, 90)), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
    }


def summarize(turns: list[TurnResult], skip_first: bool = True) -> dict[str, dict[str, float]]:
    """Per metric over the turns; the first turn is kept out (it pays one-off cache misses)."""
    measured = [t for t in turns[1 if skip_first else 0 :] if t.outcome == "turn_end"] or turns
    rows: dict[str, list[float]] = {}
    for t in measured:
        for stage in STAGES:
            if stage in t.first_output_ms:
                rows.setdefault(f"{stage} first output", []).append(t.first_output_ms[stage])
        fo = t.first_output_ms
        for a, b, name in (
            ("vad", "asr", "asr after endpoint"),
            ("asr", "llm", "llm first token after asr"),
            ("llm", "tts", "tts first audio after llm"),
        ):
            if a in fo and b in fo:
                rows.setdefault(name, []).append(fo[b] - fo[a])
        if t.voice_to_voice_ms is not None:
            rows.setdefault("voice_to_voice (server)", []).append(t.voice_to_voice_ms)
            if "tts" in fo:
                rows.setdefault("outbox: tts -> sent", []).append(t.voice_to_voice_ms - fo["tts"])
        if t.client_voice_to_voice_ms is not None:
            rows.setdefault("voice_to_voice (client)", []).append(t.client_voice_to_voice_ms)
        for engine, ms in t.cpu_ms.items():
            rows.setdefault(f"cpu ms per turn: {engine}", []).append(ms)
    return {name: stats(values) for name, values in rows.items()}


def print_table(summary: dict[str, dict[str, float]], extra: dict[str, Any]) -> None:
    print(f"\n{'ms (after the last voiced frame)':<32}{'median':>9}{'p90':>9}{'min':>9}{'max':>9}")
    for name, s in summary.items():
        print(f"{name:<32}{s['median']:>9.0f}{s['p90']:>9.0f}{s['min']:>9.0f}{s['max']:>9.0f}")
    for key, value in extra.items():
        print(f"{key:<32}{value:>9}")


@dataclass
class Probe:
    """What is measured on the server while the turns run."""

    process: psutil.Process
    rss_peak_mb: float = 0.0
    loop_lags_ms: list[float] = field(default_factory=list)

    def cpu_s(self) -> float:
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def cpu_by_engine_s(self) -> dict[str, float]:
        """CPU seconds per engine executor thread (in-process only: threads are named after engines)."""
        names = {t.native_id: t.name for t in threading.enumerate()}
        out: dict[str, float] = {"total": self.cpu_s()}
        if self.process.pid != os.getpid():
            return out
        for thread in self.process.threads():
            name = names.get(thread.id)
            if name is None:
                key = "native threads"  # made by C libraries: CTranslate2's OpenMP pool (whisper) mostly
            else:
                key = next((e for e in ("whisper", "llama", "piper") if name.startswith(e)), "loop+client")
            out[key] = out.get(key, 0.0) + thread.user_time + thread.system_time
        return out

    async def sample_memory(self) -> None:
        while True:
            self.rss_peak_mb = max(self.rss_peak_mb, self.process.memory_info().rss / 2**20)
            await asyncio.sleep(0.25)

    async def sample_loop_lag(self) -> None:
        """Lateness of 10 ms sleeps: the server's loop, when it runs in this process."""
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.01)
            self.loop_lags_ms.append((time.perf_counter() - start - 0.01) * 1000)


@contextlib.asynccontextmanager
async def server_under_test(
    config_path: Path,
    config: dict[str, Any],
    in_process: bool,
    root: Path = ROOT,
    system: str = "voxpipe",
    server_args: tuple[str, ...] = (),
) -> AsyncIterator[tuple[str, Probe]]:
    """The real server: a ``voxpipe serve`` (or pipecat) child process, or ``serve()`` in this event loop."""
    if in_process:
        from server.app import serve
        from server.config import parse_config

        data = {**config, "server": {**config.get("server", {}), "port": 0}}
        async with serve(parse_config(data, str(config_path)), log=lambda text: print("   server: " + text)) as running:
            yield running.url, Probe(psutil.Process())
        return
    port = free_port()
    server = ServerProcess(config_path, port, root, server_command(system, config, port, server_args))
    try:
        await server.ready()
        yield f"ws://127.0.0.1:{server.port}/ws", Probe(server.ps)
    finally:
        server.stop()


async def run_turns(
    config_path: Path,
    config: dict[str, Any],
    questions: list[str],
    speech: dict[str, bytes],
    timeout_s: float,
    in_process: bool,
    root: Path = ROOT,
    system: str = "voxpipe",
    server_args: tuple[str, ...] = (),
) -> tuple[list[TurnResult], float, Probe]:
    """The turns through the server; returns them, the server's CPU % and the probe."""
    turns: list[TurnResult] = []
    async with server_under_test(config_path, config, in_process, root, system, server_args) as (url, probe):
        samplers = [asyncio.create_task(probe.sample_memory())]
        if in_process:
            samplers.append(asyncio.create_task(probe.sample_loop_lag()))
        cpu_start, wall_start = probe.cpu_s(), time.monotonic()
        async with Client.connect(url, hello={"audio_out": {"format": "pcm16", "rate": 16000}}) as client:
            for i, question in enumerate(questions):
                cpu_before = probe.cpu_by_engine_s()
                result = await play_turn(client, speech[question], question, timeout_s)
                cpu_after = probe.cpu_by_engine_s()
                result.cpu_ms = {k: round((v - cpu_before.get(k, 0.0)) * 1000) for k, v in cpu_after.items()}
                turns.append(result)
                ok = "ok" if words(result.transcript) == words(question) else "!!"
                print(
                    f"turn {i + 1:>2} {ok} v2v {result.voice_to_voice_ms} ms (client {result.client_voice_to_voice_ms})"
                    f" {result.first_output_ms} cpu {result.cpu_ms}\n         heard {result.transcript!r}"
                    f" | said {result.reply.strip()[:70]!r}",
                    flush=True,
                )
        cpu_pct = 100 * (probe.cpu_s() - cpu_start) / (time.monotonic() - wall_start)
        for task in samplers:
            task.cancel()
    return turns, cpu_pct, probe


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per turn")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument(
        "--in-process", action="store_true", help="run the server in this process and measure its event-loop lag"
    )
    parser.add_argument(
        "--server-root", default=str(ROOT), help="checkout to run the server from (A/B against another branch)"
    )
    parser.add_argument(
        "--system", choices=SYSTEMS, default="voxpipe", help="pipecat: bench/pc_voice.py on the same models and client"
    )
    parser.add_argument(
        "--pipecat-args", default="", help='more bench/pc_voice.py options: "--beam-size 1 --whisper-threads 2"'
    )
    parser.add_argument("--tag", default="", help="appended to the result file's name")
    args = parser.parse_args()
    if args.pipecat_args and args.system != "pipecat":
        parser.error("--pipecat-args needs --system pipecat")
    if args.in_process and args.system != "voxpipe":
        parser.error("--in-process runs voxpipe only")

    config = yaml.safe_load(Path(args.config).read_text())
    tts_entry = next(e for e in config["pipeline"] if e.get("engine") == "piper")
    piper_options = {k: v for k, v in tts_entry.items() if k in ("model_path", "config_path")}
    print("bench: synthesizing the questions with Piper ...", flush=True)
    piper = PiperTts(PiperTts.Options(**piper_options, warm_up=False))
    piper.load(lambda _text: None)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns)]
    speech = {q: resample(piper.synthesize_all(q), piper.rate_hz or 22050, RATE_HZ) for q in set(questions)}
    del piper

    load_before = os.getloadavg()[0]
    turns, cpu_pct, probe = asyncio.run(
        run_turns(
            Path(args.config),
            config,
            questions,
            speech,
            args.timeout_s,
            args.in_process,
            Path(args.server_root),
            args.system,
            tuple(shlex.split(args.pipecat_args)),
        )
    )
    summary = summarize(turns)
    heard = sum(words(t.transcript) == words(t.question) for t in turns)
    extra = {
        "turns (first one not counted)": len(turns),
        "transcripts exact": f"{heard}/{len(turns)}",
        "server CPU % (of one core)": round(cpu_pct),
        "server RSS peak MB": round(probe.rss_peak_mb),
        "load average (1 min) start/end": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
    }
    if probe.loop_lags_ms:
        lags = probe.loop_lags_ms
        extra["event-loop lag p50/p99 ms"] = f"{np.median(lags):.1f}/{np.percentile(lags, 99):.1f}"
    print_table(summary, extra)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "".join(f"-{t}" for t in (args.system if args.system != "voxpipe" else "", args.tag) if t)
    path = out_dir / f"voice_to_voice-{datetime.now():%Y-%m-%d-%H%M}{suffix}.json"
    system = {} if args.system == "voxpipe" else {"system": args.system, "pipecat_args": args.pipecat_args}
    path.write_text(
        json.dumps(
            {
                "when": datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv),
                **system,
                "mode": "in-process" if args.in_process else "child process",
                "server_root": args.server_root,
                "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
                "config": config["pipeline"],
                "session": config.get("session", {}),
                "summary": summary,
                **{k.split(" (")[0].replace(" ", "_"): v for k, v in extra.items()},
                "turns": [asdict(t) for t in turns],
            },
            indent=2,
        )
    )
    print(f"\nbench: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

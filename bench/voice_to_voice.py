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
import socket
import statistics
import subprocess
import sys
import time
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


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProcess:
    """``voxpipe serve`` in a child process, with CPU and memory sampling."""

    def __init__(self, config: Path, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server", "serve", "--config", str(config), "--port", str(port)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.ps = psutil.Process(self.proc.pid)
        self.log: list[str] = []
        self.rss_peak_mb = 0.0

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
                asyncio.get_running_loop().run_in_executor(None, self._drain_output)
                return
        raise TimeoutError("server did not start")

    def _drain_output(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)

    def cpu_s(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    async def sample_memory(self) -> None:
        while True:
            self.rss_peak_mb = max(self.rss_peak_mb, self.ps.memory_info().rss / 2**20)
            await asyncio.sleep(0.25)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def play_turn(client: Client, speech: bytes, question: str, timeout_s: float) -> TurnResult:
    """Speak ``speech`` at real time, keep the microphone open (silence) until the turn ends."""
    result = TurnResult(question)
    step = RATE_HZ * FRAME_MS // 1000 * 2
    speech_done = asyncio.Event()
    speech_end_at = 0.0

    async def microphone() -> None:
        nonlocal speech_end_at
        start = time.monotonic()
        sent = 0
        for pcm in (silence(300), speech):
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


def summarize(turns: list[TurnResult]) -> dict[str, dict[str, float]]:
    """Per metric over the turns; the first turn is kept out (it pays one-off cache misses)."""
    measured = [t for t in turns[1:] if t.outcome == "turn_end"] or turns
    rows: dict[str, list[float]] = {}
    for t in measured:
        for stage in STAGES:
            if stage in t.first_output_ms:
                rows.setdefault(f"{stage} first output", []).append(t.first_output_ms[stage])
        fo = t.first_output_ms
        for a, b, name in (("vad", "asr", "asr after endpoint"), ("asr", "llm", "llm first token after asr"),
                           ("llm", "tts", "tts first audio after llm")):
            if a in fo and b in fo:
                rows.setdefault(name, []).append(fo[b] - fo[a])
        if t.voice_to_voice_ms is not None:
            rows.setdefault("voice_to_voice (server)", []).append(t.voice_to_voice_ms)
            if "tts" in fo:
                rows.setdefault("outbox: tts -> sent", []).append(t.voice_to_voice_ms - fo["tts"])
        if t.client_voice_to_voice_ms is not None:
            rows.setdefault("voice_to_voice (client)", []).append(t.client_voice_to_voice_ms)
    return {name: stats(values) for name, values in rows.items()}


def print_table(summary: dict[str, dict[str, float]], extra: dict[str, Any]) -> None:
    print(f"\n{'ms after the last voiced frame':<32}{'median':>9}{'p90':>9}{'min':>9}{'max':>9}")
    for name, s in summary.items():
        print(f"{name:<32}{s['median']:>9.0f}{s['p90']:>9.0f}{s['min']:>9.0f}{s['max']:>9.0f}")
    for key, value in extra.items():
        print(f"{key:<32}{value:>9}")


async def run_turns(
    config_path: Path, questions: list[str], speech: dict[str, bytes], timeout_s: float
) -> tuple[list[TurnResult], float, float]:
    """The turns through a fresh server process; returns them, the server's CPU % and peak RSS (MB)."""
    server = ServerProcess(config_path, free_port())
    turns: list[TurnResult] = []
    try:
        await server.ready()
        memory = asyncio.create_task(server.sample_memory())
        cpu_start, wall_start = server.cpu_s(), time.monotonic()
        url = f"ws://127.0.0.1:{server.port}/ws"
        async with Client.connect(url, hello={"audio_out": {"format": "pcm16", "rate": 16000}}) as client:
            for i, question in enumerate(questions):
                result = await play_turn(client, speech[question], question, timeout_s)
                turns.append(result)
                ok = "ok" if words(result.transcript) == words(question) else "!!"
                print(
                    f"turn {i + 1:>2} {ok} v2v {result.voice_to_voice_ms} ms (client {result.client_voice_to_voice_ms})"
                    f" {result.first_output_ms} | heard {result.transcript!r} | said {result.reply.strip()[:70]!r}",
                    flush=True,
                )
        cpu_pct = 100 * (server.cpu_s() - cpu_start) / (time.monotonic() - wall_start)
        memory.cancel()
    finally:
        server.stop()
    return turns, cpu_pct, server.rss_peak_mb


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per turn")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    config = yaml.safe_load(Path(args.config).read_text())
    tts_entry = next(e for e in config["pipeline"] if e.get("engine") == "piper")
    piper_options = {k: v for k, v in tts_entry.items() if k in ("model_path", "config_path")}
    print("bench: synthesizing the questions with Piper ...", flush=True)
    piper = PiperTts(PiperTts.Options(**piper_options, warm_up=False))
    piper.load(lambda _text: None)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns)]
    speech = {q: resample(piper.synthesize_all(q), piper.rate_hz or 22050, RATE_HZ) for q in set(questions)}
    del piper

    turns, cpu_pct, rss_peak_mb = asyncio.run(run_turns(Path(args.config), questions, speech, args.timeout_s))
    summary = summarize(turns)
    heard = sum(words(t.transcript) == words(t.question) for t in turns)
    extra = {
        "turns (first one not counted)": len(turns),
        "transcripts exact": f"{heard}/{len(turns)}",
        "server CPU % (of one core)": round(cpu_pct),
        "server RSS peak MB": round(rss_peak_mb),
        "load average (1 min) at end": round(os.getloadavg()[0], 2),
    }
    print_table(summary, extra)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"voice_to_voice-{datetime.now():%Y-%m-%d-%H%M}.json"
    path.write_text(
        json.dumps(
            {
                "when": datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv),
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
    print(f"\nbench: wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

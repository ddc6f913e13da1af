"""The OpenAI Realtime endpoint on the real config, through the official SDK: latency, cancel, translation cost.

Runs the server in this process on ``config.yaml`` (the embedded stack by default) and one SDK conversation:
- N spoken turns: Piper speaks each question at 24 kHz, appended in 20 ms pieces at real time with silence
  before and after (and silence flowing while the agent answers, as a microphone would): the client-seen
  time from the end of the spoken clip (Piper's own trailing silence included) to the first audio delta,
  and from ``speech_stopped`` to it;
- N cancels: a long answer is cancelled at its first audio delta: the time to its ``response.done``, the
  audio of it that was already on its way (the playout lead: it arrives after the cancel was sent), and
  the events of it after ``response.done`` (must be 0);
- the translation cost of one 20 ms audio delta (PCM, and G.711 with its 3:1 filter), in microseconds.

    .venv/bin/python bench/realtime.py --turns 5 [--config config.yaml]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.resample import resample  # noqa: E402
from tests.client import running_server, silence  # noqa: E402
from tests.realtime import Events, sdk_connect  # noqa: E402
from transports import messages as m  # noqa: E402
from transports.limits import LimitOptions  # noqa: E402
from transports.realtime import RealtimeConnection, RealtimeOptions  # noqa: E402
from transports.realtime_config import RealtimeConfig  # noqa: E402
from transports.realtime_vocab import GA  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Tell me about the moon.", "How do birds fly?"]
CHUNK = 960  # 20 ms of 24 kHz PCM16


async def play(ev: Events, pcm: bytes) -> float:
    """Append ``pcm`` at real time; returns when its last piece was sent (monotonic)."""
    start = time.monotonic()
    sent_at = start
    for n, i in enumerate(range(0, len(pcm), CHUNK)):
        await ev.conn.input_audio_buffer.append(audio=base64.b64encode(pcm[i : i + CHUNK]).decode())
        sent_at = time.monotonic()
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - time.monotonic()))  # a microphone's pace
    return sent_at


async def spoken_turns(server: Any, turns: int) -> dict[str, list[float]]:
    piper = next(spec.factory.backend for spec in server.specs if spec.engine_name == "piper")
    out: dict[str, list[float]] = {"clip_end_to_audio_ms": [], "stopped_to_audio_ms": []}
    async with sdk_connect(server) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        for i in range(turns):
            speech = resample(piper.synthesize_all(QUESTIONS[i % len(QUESTIONS)]), piper.rate_hz, 24000)
            await play(ev, silence(300, 24000))
            last_voice = await play(ev, speech)
            silent = asyncio.create_task(play(ev, silence(4000, 24000)))
            try:
                first = await ev.until_type("response.output_audio.delta", timeout=60)
            finally:
                silent.cancel()
            stopped = next(ev.at[ev.seen.index(e)] for e in first if e.type == "input_audio_buffer.speech_stopped")
            out["clip_end_to_audio_ms"].append((ev.at[-1] - last_voice) * 1000)
            out["stopped_to_audio_ms"].append((ev.at[-1] - stopped) * 1000)
            await ev.until_type("response.done", timeout=60)
    return out


async def cancels(server: Any, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"cancel_to_done_ms": [], "in_flight_at_cancel_ms": [], "stale_after_done": []}
    story = {"type": "input_text", "text": "Tell me a long story about a dragon."}
    async with sdk_connect(server) as conn:
        ev = Events(conn)
        await ev.until_type("session.created")
        for _ in range(rounds):
            await conn.conversation.item.create(item={"type": "message", "role": "user", "content": [story]})
            await conn.response.create()
            first = (await ev.until_type("response.output_audio.delta", timeout=60))[-1]
            sent_at = time.monotonic()
            await conn.response.cancel()
            cut = await ev.until_type("response.done", timeout=10)
            out["cancel_to_done_ms"].append((ev.at[-1] - sent_at) * 1000)
            after = [e for e, at in zip(ev.seen, ev.at, strict=True) if at >= sent_at]
            deltas = [
                e for e in after if e.type == "response.output_audio.delta" and e.response_id == first.response_id
            ]
            out["in_flight_at_cancel_ms"].append(sum(len(base64.b64decode(e.delta)) for e in deltas) / 48)
            await conn.conversation.item.create(
                item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks."}]}
            )
            await conn.response.create()
            later = await ev.until_type("response.done", timeout=60)
            stale = [e for e in later if getattr(e, "response_id", None) == first.response_id]
            out["stale_after_done"].append(float(len(stale)))
            assert cut[-1].response.status == "cancelled"
    return out


def delta_cost_us() -> dict[str, float]:
    """One 20 ms audio delta through the protocol object's encode (base64 + JSON, and G.711 + filter)."""
    out = {}
    for fmt in ("pcm", "pcmu"):
        conn = RealtimeConnection(
            vocab=GA,
            config=RealtimeConfig(model="m", instructions="", voice="v", output_format=fmt),
            limits=LimitOptions(),
            options=RealtimeOptions(),
            now=0.0,
        )
        conn.accept(
            [m.Ready(session="s", graph=[], audio_in=m.AudioFormat(), audio_out=m.AudioFormat())],
            in_rate_hz=24000,
            busy=lambda: False,
            now=0.0,
        )
        conn.encode(m.Reply(stage="llm", turn=1, text="hi"))
        chunk = m.Sequenced(1, m.AudioOut(stage="tts", turn=1, seq=0, data=bytes(range(256)) * 3 + bytes(192)))
        n = 2000
        out[f"{fmt}_delta_us"] = timeit.timeit(lambda c=conn, x=chunk: c.encode(x), number=n) / n * 1e6  # type: ignore[misc]
    return out


def summary(values: list[float]) -> str:
    return f"median {statistics.median(values):7.1f}  max {max(values):7.1f}  (n={len(values)})"


async def main(config: dict[str, Any], turns: int) -> None:
    config.setdefault("server", {})["port"] = 0
    async with running_server(config) as server:
        results = {**await spoken_turns(server, turns), **await cancels(server, turns)}
    for name, values in results.items():
        print(f"{name:24s} {summary(values)}")
    for name, value in delta_cost_us().items():
        print(f"{name:24s} {value:7.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    args = parser.parse_args()
    asyncio.run(main(yaml.safe_load(Path(args.config).read_text()), args.turns))

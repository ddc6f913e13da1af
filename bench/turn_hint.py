"""The pause's end-of-turn verdict offline, words alone against words and voice (Smart Turn), over many draws.

    .venv/bin/python bench/turn_hint.py [--draws 6]

Each of bench/turn_taking.py's 20 cut-off first halves ("Remind me to call my") and 20 complete sentences
is rendered by Piper ``--draws`` times (its random variation: a new reading each time), with the audio the
ASR stage holds at its pause decode (200 ms of room before, 80 ms of pause after). Each draw is decoded by
the embedded Whisper engine as that decode does, and scored by Smart Turn v3.2. Counted: how many draws
sound finished to the words alone, and to the words and the voice at several ``turn_finished_prob``
values. A cut-off half that sounds finished ends the turn in the pause; a complete sentence that does not
waits ``end_incomplete_ms``. Faster and steadier than the real-time bench for this one question, which the
real-time bench's 20 single draws cannot settle (its mid-sentence count moved 1-4 between runs of the same
code). Writes bench/results/turn_hint-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.turn_taking import COMPLETE, INCOMPLETE, NOISE_FLOOR_DBFS, RATE_HZ, Voice, noise  # noqa: E402
from stages import turn_model  # noqa: E402
from stages.endpointing import sounds_complete  # noqa: E402
from stages.engines.whisper import WhisperAsr  # noqa: E402
from stages.registry import build_stage  # noqa: E402

THRESHOLDS = (0.2, 0.3, 0.5)


async def main(draws: int) -> dict[str, Any]:
    entry = next(s for s in yaml.safe_load((ROOT / "config.yaml").read_text())["pipeline"] if s["name"] == "asr")
    asr = build_stage(entry, "pipeline.asr").factory.backend  # config.yaml's whisper, its options split as served
    assert isinstance(asr, WhisperAsr), "config.yaml's asr is not the embedded whisper"
    asr.load(print)
    model = turn_model.load("smart-turn", print)
    assert model is not None
    voice, rng = Voice(), np.random.default_rng(7)
    out: dict[str, Any] = {"date": dt.datetime.now().isoformat(timespec="seconds"), "draws": draws}
    for kind, texts in (("cut_off", [first for first, _ in INCOMPLETE]), ("complete", COMPLETE)):
        rows = []
        for text in texts:
            for _ in range(draws):
                audio = np.concatenate(
                    [
                        noise(int(0.2 * RATE_HZ), NOISE_FLOOR_DBFS, rng),
                        voice.say(text),
                        noise(int(0.08 * RATE_HZ), NOISE_FLOOR_DBFS, rng),
                    ]
                )
                pcm = np.clip(audio, -32768, 32767).astype("<i2").tobytes()
                heard = asr._transcribe(pcm, "en", True)
                words = getattr(heard, "text", heard)
                rows.append(
                    {
                        "text": text,
                        "heard": words,
                        "words_finished": sounds_complete(words),
                        "voice_finished_prob": round(await model.finished_prob(pcm, RATE_HZ) or 0.0, 3),
                    }
                )
        out[kind] = {
            "draws": len(rows),
            "finished_to_the_words": sum(r["words_finished"] for r in rows),
            "finished_to_words_and_voice": {
                str(t): sum(r["words_finished"] and r["voice_finished_prob"] >= t for r in rows) for t in THRESHOLDS
            },
            "rows": rows,
        }
        print(kind, {k: v for k, v in out[kind].items() if k != "rows"}, flush=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=6, help="Piper renderings of each sentence")
    result = asyncio.run(main(parser.parse_args().draws))
    path = ROOT / "bench" / "results" / f"turn_hint-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"   results: {path.relative_to(ROOT)}")

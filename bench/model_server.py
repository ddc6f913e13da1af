"""Voice-to-voice with the LLM in-process (llama.cpp in each voxpipe) against a separate model server
(llama-cpp-python's OpenAI-compatible ``llama_cpp.server``, same SmolLM2 GGUF, same sampling), with one
voxpipe process and with two sharing it: the scale-out shape, workers for sockets and a model tier.

Each mode runs ``voxpipe serve`` child processes on the real ``config.yaml`` (only the ``llm`` entry differs)
and plays the same spoken turns into each, as ``bench/voice_to_voice.py`` does (Piper's voice, 20 ms frames at
real time); with two processes both conversations run at the same time. Prints a table and writes
``bench/results/model_server-<date>.json``.

    .venv/bin/python bench/model_server.py --turns 6 [--modes embedded,server,embedded2,server2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.voice_to_voice import QUESTIONS, RATE_HZ, TurnResult, run_turns, stats  # noqa: E402
from stages.engines.piper_tts import PiperTts  # noqa: E402
from stages.resample import resample  # noqa: E402
from tests.model_server import ModelServer, openai_llm  # noqa: E402

MODES = {
    "embedded": (1, False),  # (voxpipe processes, LLM behind the model server)
    "server": (1, True),
    "embedded2": (2, False),
    "server2": (2, True),
}


def config_for(base: dict[str, Any], llm_server: ModelServer | None) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(json.dumps(base))
    if llm_server is None:
        return config
    llama = next(e for e in config["pipeline"] if e["name"] == "llm")
    entry = openai_llm(llm_server, max_tokens=llama["max_tokens"], temperature=llama["temperature"])
    config["pipeline"] = [entry if e["name"] == "llm" else e for e in config["pipeline"]]
    return config


async def run_mode(
    name: str, base: dict[str, Any], questions: list[str], speech: dict[str, bytes], timeout_s: float
) -> dict[str, Any]:
    workers, shared = MODES[name]
    llm_server = ModelServer(n_threads=1) if shared else None
    try:
        if llm_server is not None:
            print(f"bench: {name}: model server up in {await llm_server.ready():.1f} s", flush=True)
        config = config_for(base, llm_server)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.yaml"
            path.write_text(yaml.safe_dump(config))
            runs = await asyncio.gather(
                *(run_turns(path, config, questions, speech, timeout_s, False, ROOT) for _ in range(workers))
            )
        model_rss_mb = psutil.Process(llm_server.proc.pid).memory_info().rss / 2**20 if llm_server else 0.0
    finally:
        if llm_server is not None:
            llm_server.stop()
    turns: list[TurnResult] = [t for turns, _cpu, _probe in runs for t in turns[1:] if t.outcome == "turn_end"]
    v2v = [t.voice_to_voice_ms for t in turns if t.voice_to_voice_ms is not None]
    client = [t.client_voice_to_voice_ms for t in turns if t.client_voice_to_voice_ms is not None]
    fo = [t.first_output_ms for t in turns if {"llm", "asr"} <= set(t.first_output_ms)]
    llm = [f["llm"] - f["asr"] for f in fo]
    return {
        "mode": name,
        "voxpipe_processes": workers,
        "model_server": shared,
        "turns_measured": len(turns),
        "voice_to_voice_ms": stats(v2v),
        "client_voice_to_voice_ms": stats(client),
        "llm_first_token_after_asr_ms": stats(llm),
        "voxpipe_cpu_pct": [round(cpu) for _turns, cpu, _probe in runs],
        "voxpipe_rss_peak_mb": [round(probe.rss_peak_mb) for _turns, _cpu, probe in runs],
        "model_server_rss_mb": round(model_rss_mb),
        "replies": [t.reply.strip()[:60] for t in turns[:3]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--turns", type=int, default=6, help="per conversation (the first is not counted)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    base = yaml.safe_load(Path(args.config).read_text())
    piper = PiperTts(PiperTts.Options(warm_up=False))
    piper.load(lambda _text: None)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.turns)]
    speech = {q: resample(piper.synthesize_all(q), piper.rate_hz or 22050, RATE_HZ) for q in set(questions)}
    del piper
    results = []
    for name in args.modes.split(","):
        print(f"bench: mode {name}", flush=True)
        results.append(asyncio.run(run_mode(name, base, questions, speech, args.timeout_s)))
    head = f"{'mode':<11}{'procs':>6}{'v2v p50':>9}{'p90':>7}{'client p50':>11}{'llm 1st':>9}"
    head += f"{'CPU %':>12}{'RSS MB':>12}"
    print("\n" + head)
    for r in results:
        v, c, f = r["voice_to_voice_ms"], r["client_voice_to_voice_ms"], r["llm_first_token_after_asr_ms"]
        rss = "+".join(map(str, r["voxpipe_rss_peak_mb"]))
        rss += f"+{r['model_server_rss_mb']}" if r["model_server"] else ""
        cpu = "+".join(map(str, r["voxpipe_cpu_pct"]))
        print(
            f"{r['mode']:<11}{r['voxpipe_processes']:>6}{v.get('median', 0):>9.0f}{v.get('p90', 0):>7.0f}"
            f"{c.get('median', 0):>11.0f}{f.get('median', 0):>9.0f}{cpu:>12}{rss:>12}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"model_server-{datetime.now():%Y-%m-%d-%H%M}.json"
    path.write_text(
        json.dumps(
            {
                "when": datetime.now().isoformat(timespec="seconds"),
                "command": " ".join(sys.argv),
                "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
                "turns_per_conversation": args.turns,
                "results": results,
            },
            indent=2,
        )
    )
    print(f"\nbench: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

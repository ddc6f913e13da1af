"""Turn-taking through the real server on the embedded stack (issue 15): three sets of figures.

    .venv/bin/python bench/turn_taking.py [--only eot,barge,echo] [--trials N]

- eot: 20 utterances with a mid-sentence pause of 500-800 ms and 20 complete ones, spoken by Piper and
  streamed in real time: replies started mid-sentence (the turn ended in the pause; target 0), and the
  endpoint delay on the complete ones (the server's ``metrics.first_output_ms.vad``: last voiced frame to
  the end of the turn; target median <= 250 ms).
- barge: the agent speaks (Piper); 0.8 s in, the user overlaps: backchannels, coughs / laughs / noise
  bursts, and real interruptions (N of each, mixed at a person's level over a quiet noise floor; the client
  has its own echo cancellation): false interruptions (target 0), real ones missed (target 0), voice onset
  to ``interrupted`` (target p90 <= 500 ms), and how long a false alarm kept the agent paused (median).
- echo: a client with no echo cancellation in a room (speaker clipping, RT60 300 and 600 ms, direct path
  after 40-80 ms, echo as loud as a person): the agent's own echo in 20 turns (target: 0 barge-ins) and a
  person talking over it in 20 turns (target: 20 interrupted); ERLE (dB) and CPU per session of the canceller.

The server runs with config.yaml's pipeline and session defaults, with the echo LLM (the words spoken
are what matters here; the agent speaks with ``say``). Writes bench/results/turn_taking-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.resample import resample  # noqa: E402
from tests.client import Client, running_server  # noqa: E402
from tests.room import RATE_HZ, double_talk_turns, open_turns, quiet_room, rms_dbfs, room, room_response  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PERSON_DBFS = -26.0  # a person at a headset or desk mic
NOISE_FLOOR_DBFS = -75.0  # a quiet room through a decent mic

INCOMPLETE = [
    ("I'd like to book a flight to", "Boston next Friday."),
    ("Can you set a timer for", "ten minutes please."),
    ("What's the weather like in", "Paris tomorrow?"),
    ("Remind me to call my", "mother at six."),
    ("I was wondering if you could", "help me with my homework."),
    ("Play some music by", "the Beatles."),
    ("Turn off the lights in the", "kitchen."),
    ("Tell me a story about", "a brave knight."),
    ("How long does it take to", "drive to the airport?"),
    ("I need to buy some", "milk and eggs."),
    ("Send a message to", "Sarah saying I'm late."),
    ("What is the capital of", "Australia?"),
    ("Could you please translate", "good morning into Spanish?"),
    ("I want to order a pizza with", "extra cheese."),
    ("Schedule a meeting with", "the design team on Monday."),
    ("My favorite color is", "dark green."),
    ("Add eggs and", "butter to my shopping list."),
    ("Find a restaurant near", "the train station."),
    ("I think we should", "leave before the traffic starts."),
    ("Can you tell me about the", "history of Rome?"),
]
COMPLETE = [
    "What time is it?",
    "Turn on the lights in the kitchen.",
    "Tell me a joke.",
    "How are you today?",
    "Set an alarm for seven.",
    "What is the weather tomorrow?",
    "Play some jazz.",
    "Thank you very much.",
    "Call my sister.",
    "Where is the nearest pharmacy?",
    "I'm hungry.",
    "Stop the music.",
    "What's two plus two?",
    "Read me the news.",
    "Open the garage door.",
    "Who wrote Hamlet?",
    "It's too cold in here.",
    "Cancel my next meeting.",
    "Good morning.",
    "Is it going to rain?",
]
AGENT_LINE = (
    "The road north is dangerous at night, and wolves have been seen near the old mill, so take a torch "
    "and stay on the path until you reach the village gate."
)
BACKCHANNELS = ["Yeah.", "Uh-huh.", "Okay.", "Right.", "Mm-hmm.", "Yes.", "I see."]
INTERRUPTIONS = [
    "Wait, stop.",
    "Hold on a second.",
    "Actually, I meant Tuesday.",
    "No, that's not right.",
    "Can you repeat that?",
    "Stop talking please.",
    "Sorry, what did you say?",
    "Wait, which village?",
]


# ---------------------------------------------------------------- sounds


class Voice:
    """Piper's joe, for the user (at 16 kHz, scaled to a person's level)."""

    def __init__(self) -> None:
        from stages.engines.piper_tts import PiperTts

        self.tts = PiperTts(PiperTts.Options(warm_up=False))
        self.tts.load(lambda _text: None)

    def say(self, text: str, *, dbfs: float = PERSON_DBFS, speed: float = 1.0) -> np.ndarray:
        assert self.tts.rate_hz is not None
        pcm = self.tts.synthesize_all(text)
        samples = np.frombuffer(resample(pcm, int(self.tts.rate_hz * speed), RATE_HZ), dtype="<i2").astype(float)
        return trim(samples) * 10 ** ((dbfs - rms_dbfs(trim(samples))) / 20)


def trim(samples: np.ndarray) -> np.ndarray:
    """Without the leading and trailing silence Piper puts around a sentence."""
    loud = np.flatnonzero(np.abs(samples) > 300)
    return samples[loud[0] : loud[-1] + 1] if loud.size else samples


def noise(n: int, dbfs: float, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal(n)
    return x / np.sqrt(np.mean(x**2)) * 32768 * 10 ** (dbfs / 20)


def cough(rng: np.random.Generator) -> np.ndarray:
    """A burst of band-limited noise with a fast attack and a 150-300 ms decay."""
    n = int(RATE_HZ * rng.uniform(0.2, 0.4))
    t = np.arange(n) / RATE_HZ
    burst = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * (np.fft.rfftfreq(n, 1 / RATE_HZ) < 3000), n)
    shaped = burst * np.minimum(1.0, t / 0.01) * np.exp(-t / rng.uniform(0.06, 0.12))
    return shaped / np.sqrt(np.mean(shaped**2)) * 32768 * 10 ** ((PERSON_DBFS + 6) / 20)


def voiced_end_s(samples: np.ndarray) -> float:
    """Seconds into ``samples`` where the last loud 20 ms frame ends."""
    frames = samples[: samples.size - samples.size % 320].reshape(-1, 320)
    loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) > 32768 * 10 ** (-45 / 20))
    return float((loud[-1] + 1) * 320 / RATE_HZ) if loud.size else 0.0


def pcm(samples: np.ndarray) -> bytes:
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


ASR_OPTIONS: dict[str, Any] = {}  # --asr: options over config.yaml's asr entry ('{"turn_model": "none"}')


def pipeline(*, llm: bool = True) -> list[dict[str, Any]]:
    """config.yaml's pipeline, with the echo LLM in place of llama (its words do not matter here)."""
    stages: list[dict[str, Any]] = yaml.safe_load((ROOT / "config.yaml").read_text())["pipeline"]
    out = [{**s, **ASR_OPTIONS} if s["name"] == "asr" else s for s in stages if s["engine"] != "llama"]
    if llm:
        out.insert(2, {"name": "llm", "engine": "echo", "delay_ms": 5})
    return out


def config(**session: Any) -> dict[str, Any]:
    defaults = yaml.safe_load((ROOT / "config.yaml").read_text()).get("session", {})
    return {
        "server": {"host": "127.0.0.1", "port": 0},
        "session": {**defaults, **session},
        "limits": {"idle_timeout_s": None},
        "pipeline": pipeline(),
    }


# ---------------------------------------------------------------- the client


async def stream(c: Client, samples: np.ndarray, *, t0: float) -> None:
    """The mic, in real time from ``t0`` (client clock), 20 ms frames."""
    data = pcm(samples)
    for i, start in enumerate(range(0, len(data), 640)):
        await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
        await c.send({"type": "audio", "data": data[start : start + 640]})


async def settle(c: Client) -> None:
    """Until the agent has finished its answer (and nothing more comes for a moment)."""
    while any(x["type"] != "audio" for x in await c.quiet(0.6)):
        pass


async def settle_turns(c: Client, timeout_s: float = 30.0) -> None:
    """Until every turn seen so far has ended (the answer to a real interruption included), so the next
    trial's ``say`` is not queued behind it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not open_turns(c.received):
            return
        with contextlib.suppress(TimeoutError):
            await c.recv(max(0.01, deadline - time.monotonic()))


async def eot(voice: Voice, n: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    floor = NOISE_FLOOR_DBFS
    async with running_server(config()) as srv, Client.connect(srv.url) as c:
        mid_sentence = 0
        details: list[dict[str, Any]] = []
        for first, rest in INCOMPLETE[:n]:
            pause_s = rng.uniform(0.5, 0.8)
            a, b = voice.say(first), voice.say(rest)
            lead = noise(int(0.3 * RATE_HZ), floor, rng)
            gap = noise(int(pause_s * RATE_HZ), floor, rng)
            tail = noise(int(2.0 * RATE_HZ), floor, rng)
            audio = np.concatenate([lead, a, gap, b, tail])
            t0 = time.monotonic() + 0.05
            pause_from, pause_to = t0 + (lead.size + a.size) / RATE_HZ, t0 + (lead.size + a.size + gap.size) / RATE_HZ
            sender = asyncio.create_task(stream(c, audio, t0=t0))
            start = len(c.received)
            ends = []
            while not sender.done() or not ends:
                try:
                    msg = await c.recv(3.0)
                except TimeoutError:
                    break
                if msg["type"] == "vad" and msg["event"] == "speech_end":
                    ends.append(msg["_at"])
                    if len(ends) and msg["_at"] > pause_to:
                        break
            await sender
            early = [e for e in ends if pause_from < e < pause_to + 0.1]
            mid_sentence += bool(early)
            heard = [x["text"] for x in c.received[start:] if x["type"] == "transcript" and x["final"]]
            details.append(
                {
                    "text": f"{first} ... {rest}",
                    "pause_ms": round(pause_s * 1000),
                    "ended_in_pause": bool(early),
                    "heard": heard,  # the final transcripts: a turn ended in the pause shows its first half
                }
            )
            await settle(c)
        delays: list[float] = []
        for text in COMPLETE[:n]:
            speech = voice.say(text)
            audio = np.concatenate(
                [noise(int(0.3 * RATE_HZ), floor, rng), speech, noise(int(1.8 * RATE_HZ), floor, rng)]
            )
            t0 = time.monotonic() + 0.05
            sender = asyncio.create_task(stream(c, audio, t0=t0))
            msgs = await c.recv_until(lambda x: x["type"] == "transcript" and x["final"] and x["text"], timeout=15)
            turn = msgs[-1]["turn"]
            msgs = await c.recv_until(lambda x, t=turn: x["type"] == "metrics" and x["turn"] == t, timeout=30)
            await sender
            if "vad" in msgs[-1]["first_output_ms"]:
                delays.append(msgs[-1]["first_output_ms"]["vad"])
            await settle(c)
    return {
        "incomplete": n,
        "replies_started_mid_sentence": mid_sentence,
        "complete": n,
        "endpoint_delay_ms": {
            "median": statistics.median(delays) if delays else None,
            "p90": percentile(delays, 90),
            "all": delays,
        },
        "details": details,
    }


async def overlap_trial(c: Client, voice_over: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """The agent speaks; 0.8 s into its audio the user's sound starts. What happened to the agent's turn."""
    await c.send({"type": "say", "text": AGENT_LINE})
    first = await c.recv_type("audio", timeout=20)
    agent = first["turn"]
    floor = noise(int(4.0 * RATE_HZ), NOISE_FLOOR_DBFS, rng)
    mic = floor.copy()
    at = int(0.8 * RATE_HZ)
    mic[at : at + voice_over.size] += voice_over[: mic.size - at]
    t0 = first["_at"]
    onset = t0 + 0.8
    sender = asyncio.create_task(stream(c, mic, t0=t0))
    paused = resumed = cut = None
    start = len(c.received)
    while True:
        msg = await c.recv(20)
        if msg.get("turn") != agent:
            continue
        if msg["type"] == "agent_paused" and paused is None:
            paused = msg["_at"]
        elif msg["type"] == "agent_resumed":
            resumed = msg["_at"]
        elif msg["type"] == "interrupted":
            cut = msg["_at"]
            break
        elif msg["type"] == "turn_end":
            break
    await sender
    await c.quiet(0.3)  # the user's own turn opens, if the VAD still has it
    await settle_turns(c)  # ... and every turn ends, an answer to real words too
    # what the ASR made of the user's sound (partials marked "…"), for the post-mortem
    heard = [
        x["text"] + ("" if x["final"] else "…")
        for x in c.received[start:]
        if x["type"] == "transcript" and x.get("turn") != agent
    ]
    return {
        "heard": heard,
        "interrupted": cut is not None,
        "onset_to_interrupted_ms": None if cut is None else round((cut - onset) * 1000, 1),
        "paused_ms": None if paused is None else round(((resumed or cut or paused) - paused) * 1000, 1),
    }


async def barge(voice: Voice, n: int) -> dict[str, Any]:
    rng = np.random.default_rng(2)
    kinds: dict[str, list[np.ndarray]] = {
        "backchannel": [voice.say(BACKCHANNELS[i % len(BACKCHANNELS)], speed=rng.uniform(0.9, 1.15)) for i in range(n)],
        "noise": [
            cough(rng)
            if i % 3 == 0
            else voice.say("Ha ha.", speed=1.1)
            if i % 3 == 1
            else noise(int(RATE_HZ * rng.uniform(0.15, 0.5)), PERSON_DBFS, rng)
            for i in range(n)
        ],
        "words": [voice.say(INTERRUPTIONS[i % len(INTERRUPTIONS)], speed=rng.uniform(0.9, 1.15)) for i in range(n)],
    }
    out: dict[str, Any] = {}
    async with running_server(config()) as srv, Client.connect(srv.url) as c:
        for kind, sounds in kinds.items():
            trials = [await overlap_trial(c, sound, rng) for sound in sounds]
            out[kind] = trials
    false_alarms = [t for k in ("backchannel", "noise") for t in out[k]]
    real = out["words"]
    latencies = [t["onset_to_interrupted_ms"] for t in real if t["interrupted"]]
    paused = [t["paused_ms"] for t in false_alarms if not t["interrupted"] and t["paused_ms"] is not None]
    return {
        "false_interruptions": {k: sum(t["interrupted"] for t in out[k]) for k in ("backchannel", "noise")},
        "real_missed": sum(not t["interrupted"] for t in real),
        "onset_to_interrupted_ms": {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90)},
        "false_alarm_paused_ms_median": statistics.median(paused) if paused else None,
        "trials": n,
        "raw": out,
    }


def verdicts() -> dict[str, float]:
    """The server's barge-in decisions so far, by verdict (the bench runs the server in process)."""
    from server.barge_in import BARGE_INS_TOTAL

    names = ("words", "backchannel", "nothing", "unsure_words", "echo_words", "undecided_voice", "long_voice")
    return {name: BARGE_INS_TOTAL.get(verdict=name) for name in names}


def decided_since(before: dict[str, float]) -> dict[str, float]:
    """The decisions made since ``verdicts()`` returned ``before``, by verdict (only those that happened)."""
    return {k: v - before[k] for k, v in verdicts().items() if v > before[k]}


def event(msg: dict[str, Any], t0: float) -> str:
    """One message, short, for a post-mortem trace (audio: its turn only), and when it came (s after ``t0``)."""
    what = msg.get("event") or msg.get("text") or ""
    at = f"@{msg['_at'] - t0:.2f}" if "_at" in msg else ""
    return f"{msg['type']}:{msg.get('turn')}" + (f":{what}" if what and msg["type"] != "audio" else "") + at


def trace_of(msgs: list[dict[str, Any]]) -> list[str]:
    """Messages, short, for a post-mortem (a run of audio chunks of one turn: the first only), timed from
    the first."""
    first = [x["type"] != "audio" or j == 0 or msgs[j - 1].get("turn") != x["turn"] for j, x in enumerate(msgs)]
    t0 = msgs[0].get("_at", 0.0) if msgs else 0.0
    return [event(x, t0) for x, keep in zip(msgs, first, strict=True) if keep]


async def said_in_room(r: Any, text: str) -> list[dict[str, Any]]:
    """The agent says ``text`` into the room; its messages until every turn is over (the echo's own turns
    too) and the room is quiet, so the next line starts alone."""
    await r.client.send({"type": "say", "text": text})
    return await quiet_room(r, [])


def turn_fates(msgs: list[dict[str, Any]]) -> tuple[int | None, set[int], set[int]]:
    """(the said turn, the turns interrupted, user turns answered): the said turn is the first with audio
    and no user input of its own; a user turn (a vad or transcript message) with a ``reply`` was answered."""
    user = {x["turn"] for x in msgs if x["type"] in ("vad", "transcript")}
    said = next((x["turn"] for x in msgs if x["type"] == "audio" and x["turn"] not in user), None)
    cut = {x["turn"] for x in msgs if x["type"] == "interrupted"}
    answered = {x["turn"] for x in msgs if x["type"] == "reply" and x["turn"] in user}
    return said, cut, answered


async def echo(voice: Voice, turns: int, canceller: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(3)
    lines = [
        "Welcome, traveller.",
        "The smithy is past the well.",
        "Three silver coins, no less.",
        "Beware the wolves near the mill.",
        "Come back at dawn.",
    ]
    out: dict[str, Any] = {}
    for rt60 in (0.3, 0.6):
        rir = room_response(rt60, rng.uniform(40, 80), seed=int(rt60 * 10))
        options = {"rir": rir, "clip_drive": 1.5, "echo_db": 0.0, "send_acks": True}
        async with room(config(), canceller=True, canceller_options=canceller, **options) as (r, srv):
            (session,) = srv.sessions.values()
            aec = session.echo_canceller
            assert aec is not None, "the echo canceller is not on (pip install livekit)"
            barge_ins = pauses = echo_answered = 0
            trace: list[list[Any]] = []  # the messages of each echo-only turn that saw an interruption
            verdicts_before = verdicts()
            started = time.monotonic()
            for i in range(turns):
                msgs = await said_in_room(r, lines[i % len(lines)])
                said, cut, answered = turn_fates(msgs)
                barge_ins += said in cut
                echo_answered += len(answered)
                pauses += sum(1 for x in msgs if x["type"] == "agent_paused" and x["turn"] == said)
                if cut or answered:
                    trace.append([i, *trace_of(msgs)])
            echo_s = time.monotonic() - started
            decided = decided_since(verdicts_before)
            erle_db = 10 * math.log10(aec.energy_in / max(aec.energy_out, 1.0))
            echo_loss_db = aec.echo_loss_db  # what echo alone loses now (server/aec.py; barge_in trusts it)
            person = voice.say("Hold on a second, I need to ask you about the quest.", dbfs=PERSON_DBFS)
            verdicts_before = verdicts()
            start = len(r.client.received)
            latencies = await double_talk_turns(r, AGENT_LINE, person, turns, delay_s=0.8)
            person_decided = decided_since(verdicts_before)
            person_heard = [  # what the ASR made of each voice in the person's turns (partials marked "…")
                x["text"] + ("" if x["final"] else "…") for x in r.client.received[start:] if x["type"] == "transcript"
            ]
            hit = [x for x in latencies if x is not None]
            out[f"rt60_{int(rt60 * 1000)}ms"] = {
                "echo_only_barge_ins": barge_ins,  # of the agent's turns, those its own echo cut
                "echo_only_answered": echo_answered,  # user turns made of the echo that the agent answered
                "echo_only_pauses": pauses,
                "echo_only_verdicts": decided,  # what decided each pause (server/barge_in.py's counter)
                "person_interrupted": len(hit),
                "person_verdicts": person_decided,
                "turns": turns,
                "onset_to_interrupted_ms": {"p50": percentile(hit, 50), "p90": percentile(hit, 90)},
                "erle_db_echo_only": round(erle_db, 1),
                "canceller_cpu_per_session": round(aec.cpu_s / max(echo_s, 1e-9), 4),
                "echo_only_trace": trace,
                "person_heard": person_heard,
                "person_trace": trace_of(r.client.received[start:]),  # every message of the person's turns
                "gated_frames": aec.gated_frames,
                "echo_loss_db": {"after_echo_only": round(echo_loss_db, 1), "at_end": round(aec.echo_loss_db, 1)},
            }
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    only = set(args.only.split(",")) if args.only else {"eot", "barge", "echo"}
    voice = Voice()
    ASR_OPTIONS.update(json.loads(args.asr))
    result: dict[str, Any] = {"date": dt.datetime.now().isoformat(timespec="seconds"), "session": config()["session"]}
    result["asr"] = next(s for s in pipeline() if s["name"] == "asr")
    if "eot" in only:
        print(">> end of turn", flush=True)
        result["eot"] = await eot(voice, min(args.trials, 20))
        print(json.dumps({k: v for k, v in result["eot"].items() if k != "details"}, indent=1), flush=True)
    if "barge" in only:
        print(">> barge-in", flush=True)
        result["barge"] = await barge(voice, args.trials)
        print(json.dumps({k: v for k, v in result["barge"].items() if k != "raw"}, indent=1), flush=True)
    if "echo" in only:
        print(">> echo", flush=True)
        result["echo"] = await echo(voice, min(args.trials, 20), json.loads(args.canceller))
        print(json.dumps(result["echo"], indent=1), flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="eot,barge,echo (default: all)")
    parser.add_argument("--canceller", default="{}", help="echo_canceller options, JSON: '{\"residual_gate_db\": 0}'")
    parser.add_argument("--asr", default="{}", help="asr options over config.yaml's (JSON)")
    parser.add_argument("--trials", type=int, default=30, help="overlaps per kind (eot and echo use up to 20)")
    res = asyncio.run(main(parser.parse_args()))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"turn_taking-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(res, indent=1))
    print(f"   results: {path.relative_to(ROOT)}")

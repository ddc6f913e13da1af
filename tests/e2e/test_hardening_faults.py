"""Hardening matrix, faults: a client that vanishes mid-turn (TCP reset), and barge-in at random moments.

The server runs in this test's event loop, so the tests can look at every task it has.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tests.client import Client, running_server, silence, test_config, tone
from tests.rawws import open_raw
from tests.waiting import wait_until

pytestmark = pytest.mark.asyncio


def server_tasks(baseline: set[asyncio.Task[Any]]) -> set[asyncio.Task[Any]]:
    """Tasks that did not exist before the client came (minus the test's own)."""
    return {t for t in asyncio.all_tasks() if t not in baseline and t is not asyncio.current_task()}


@pytest.mark.parametrize("moment", ["llm_streaming", "audio_playing", "user_speaking"])
async def test_client_vanishes_mid_turn_tcp_reset(moment: str) -> None:
    config = test_config(
        pipeline=[
            {"name": "vad", "engine": "energy", "start_ms": 60, "end_ms": 200},
            {"name": "asr", "engine": "duration_asr", "delay_ms": 20},
            {"name": "llm", "engine": "echo", "delay_ms": 40},
            {"name": "tts", "engine": "tone", "word_ms": 100, "gap_ms": 0, "delay_ms": 10},
        ]
    )
    async with running_server(config) as srv:
        baseline = set(asyncio.all_tasks())
        raw = await open_raw(srv.port)
        session = next(iter(srv.sessions.values()))
        if moment == "user_speaking":
            for i in range(0, 32000, 640):
                await raw.send_msg({"type": "audio", "data": (silence(100) + tone(900))[i : i + 640]})
            await wait_until(lambda: bool(session.turns.live), 2)
        else:
            await raw.send_msg({"type": "text", "text": "please tell me a long story about the sea"})
            want = "reply" if moment == "llm_streaming" else "audio"
            while (await raw.read_msg())["type"] != want:
                pass
        assert session.turns.live, "the turn should be in flight when the client vanishes"
        assert len(server_tasks(baseline)) >= 5  # outbox, four stages, and the connection's own
        raw.reset()
        took_s = await wait_until(lambda: not server_tasks(baseline), 1.0)
        assert took_s < 1.0
        assert not srv.sessions
        assert srv.admission.connections == 0
        assert not session.turns.live
        async with Client.connect(srv.url) as c:  # and the server goes on
            await c.send({"type": "say", "text": "still here"})
            assert (await c.turn())[-1]["type"] == "turn_end"


FAST = test_config(
    session={"lead_ms": 60, "barge_in_min_ms": 40},
    limits={"messages_per_s": None, "audio_max_realtime": None},
    pipeline=[
        {"name": "vad", "engine": "energy", "start_ms": 40, "end_ms": 100},
        {"name": "asr", "engine": "duration_asr"},
        {"name": "llm", "engine": "echo", "delay_ms": 1},
        {"name": "tts", "engine": "tone", "word_ms": 20, "gap_ms": 0},
    ],
)


async def barge_in_many_times(c: Client, rounds: int, seed: int) -> list[dict[str, Any]]:
    """Start turns and cut them off at random moments, by ``interrupt`` or by voice; returns all received."""
    rng = random.Random(seed)
    received: list[dict[str, Any]] = []

    async def read() -> None:
        while True:
            received.append(await c.recv(timeout=30))

    reader = asyncio.create_task(read())
    try:
        for i in range(rounds):
            kind = rng.choice(["text", "say", "say"])
            await c.send({"type": kind, "text": f"round {i} " + "word " * rng.randint(1, 12)})
            await asyncio.sleep(rng.uniform(0, 0.03))
            if rng.random() < 0.75:
                await c.send({"type": "interrupt"})
            else:
                await c.stream_audio(tone(80) + silence(120))  # voice over the agent: barge-in
        await c.send({"type": "ping", "id": "end"})
        await wait_until(lambda: any(x.get("id") == "end" for x in received), 10)
        await wait_until(lambda: every_turn_ended(received), 10)  # whatever is still coming for the last turns
    finally:
        reader.cancel()
    return received


def every_turn_ended(received: list[dict[str, Any]]) -> bool:
    seen = {x["turn"] for x in received if x.get("turn") is not None}
    ended = {x["turn"] for x in received if x["type"] in ("interrupted", "turn_end")}
    return seen <= ended


def check_turn_order(received: list[dict[str, Any]]) -> dict[str, int]:
    """Nothing of a turn after its ``interrupted``/``turn_end``; one end per turn; audio seq 0,1,2,..."""
    ended: dict[int, str] = {}
    seqs: dict[int, int] = {}
    for msg in received:
        turn = msg.get("turn")
        if turn is None:
            continue
        assert turn not in ended, f"{msg['type']} of turn {turn} after its {ended.get(turn)}"
        if msg["type"] in ("interrupted", "turn_end"):
            ended[turn] = msg["type"]
        if msg["type"] == "audio":
            assert msg["seq"] == seqs.get(turn, 0)
            seqs[turn] = msg["seq"] + 1
    outcomes = list(ended.values())
    return {"interrupted": outcomes.count("interrupted"), "turn_end": outcomes.count("turn_end")}


async def test_barge_in_repeated_1000_times_never_leaks_an_interrupted_turn() -> None:
    """1,000 barge-ins over four concurrent sessions (250 each): never a message of a turn after it ended."""
    async with running_server(FAST) as srv:
        clients = [Client.connect(srv.url, framing=f) for f in ("msgpack", "json", "msgpack", "json")]
        entered = [await cm.__aenter__() for cm in clients]
        try:
            results = await asyncio.gather(*(barge_in_many_times(c, 250, seed) for seed, c in enumerate(entered)))
        finally:
            for cm in clients:
                await cm.__aexit__(None, None, None)
        totals = {"interrupted": 0, "turn_end": 0}
        for received in results:
            assert not [x for x in received if x["type"] == "error"]
            counts = check_turn_order(received)
            for key in totals:
                totals[key] += counts[key]
        assert totals["interrupted"] >= 700, totals  # most rounds really cut a turn off
        assert totals["turn_end"] >= 10, totals  # and some finished before the cut: both paths ran

"""Past one process, for real: ``voxpipe serve --workers 3`` behind HAProxy (deploy/haproxy.cfg as shipped),
conversations in a real redis-server. Dropped sockets, a worker killed with SIGKILL, a rolling restart."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from tests.cluster import WORKERS, Cluster, Conversation, cluster
from tests.waiting import wait_until

pytestmark = pytest.mark.timeout(240)
FAST_TTS = {
    "pipeline": [
        {"name": "llm", "engine": "echo", "delay_ms": 2},
        {"name": "tts", "engine": "tone", "word_ms": 40, "gap_ms": 0},
    ]
}


def check_exactly_once(conversation: Conversation, *, gapless: bool = True) -> None:
    """Every message of the session reached the client once: no number twice, and (``gapless``) none
    missing. After a TCP reset, audio in flight is lost, not replayed: only the rest must be there."""
    seqs = conversation.seqs
    assert len(seqs) == len(set(seqs)), "a message arrived twice"
    if gapless:
        missing = sorted(set(range(1, max(seqs) + 1)) - set(seqs))
        context = [
            (i, x["_seq"], x["type"], x.get("code"), x.get("turn"))
            for i, c in enumerate(conversation.clients)
            for x in c.received
            if "_seq" in x and any(abs(x["_seq"] - n) <= 3 for n in missing)
        ]
        assert not missing, f"messages {missing} are missing; around them: {context}"


async def test_a_conversation_through_haproxy_in_front_of_three_workers(tmp_path: Path) -> None:
    async with cluster(tmp_path, **FAST_TTS) as c:
        talks = [Conversation(c.url) for _ in range(6)]
        for talk in talks:
            await talk.start()
        for i in range(3):
            replies = await asyncio.gather(*(t.exchange(f"round {i}") for t in talks))
            assert all(r.startswith(f"You said: round {i}.") for r in replies)
        assert all(t.memory == [0, 2, 4] for t in talks)  # each worker keeps its sessions' history
        spread = [c.health(i)["sessions"] for i in range(WORKERS)]
        assert sum(spread) == 6
        assert max(spread) < 6, f"least connections should spread new sessions: {spread}"
        for t in talks:
            check_exactly_once(t)
            await t.close()


async def test_a_dropped_socket_resumes_on_the_same_worker_with_what_it_missed(tmp_path: Path) -> None:
    async with cluster(tmp_path, **FAST_TTS) as c:
        talk = Conversation(c.url)
        await talk.start()
        await talk.exchange("first")
        holder = next(i for i in range(WORKERS) if c.health(i)["sessions"] == 1)
        assert talk.client is not None
        await talk.client.send({"type": "text", "text": " ".join(["long"] * 40)})
        for _ in range(15):  # 300 ms of the reply heard: a few words of it stay in the history
            await talk.client.recv_type("audio")
        talk.client.ws.transport.abort()  # TCP reset mid-turn
        await wait_until(lambda: c.health(holder)["sessions"] == 0)
        reply = await talk.exchange("after the drop")
        assert reply == "You said: after the drop. I remember 4 messages."
        assert (talk.resumes, talk.fresh_starts) == (1, 0)
        assert c.health(holder)["sessions"] == 1  # ?session= went back to the same worker
        check_exactly_once(talk, gapless=False)
        await talk.close()


async def test_kill_9_of_the_worker_holding_ten_sessions(tmp_path: Path) -> None:
    async with cluster(tmp_path, **FAST_TTS) as c:
        talks = [Conversation(c.url) for _ in range(10)]
        for talk in talks:
            await talk.start(c.worker_url(0))  # all ten on worker 0
        await asyncio.gather(*(t.exchange("remember this") for t in talks))
        assert c.health(0)["sessions"] == 10
        os.kill(c.pid(0), signal.SIGKILL)
        replies = await asyncio.gather(*(t.exchange("and now?") for t in talks))
        # each resumed elsewhere (or on the restarted worker) from Redis: the answer knows the first turn
        assert all(r == "You said: and now?. I remember 2 messages." for r in replies), replies
        assert all(t.resumes == 1 and t.fresh_starts == 0 for t in talks)
        for t in talks:
            assert len(t.seqs) == len(set(t.seqs)), "a message arrived twice"
            await t.close()


async def keep_talking(talk: Conversation, stop: asyncio.Event) -> int:
    exchanges = 0
    while not stop.is_set():
        await talk.exchange(f"message {exchanges}")
        exchanges += 1
    return exchanges


async def restart(c: Cluster, i: int) -> None:
    """SIGTERM one worker: it drains (HAProxy marks it down), exits, and the parent starts it again."""
    old = c.pid(i)
    os.kill(old, signal.SIGTERM)
    await wait_until(lambda: c.haproxy_status().get(f"w{i + 1}") != "UP", 15)  # marked down while it drains
    await wait_until(lambda: (c.health(i) or {}).get("pid") not in (None, old) and c.ready(i), 30)
    await wait_until(lambda: c.haproxy_status().get(f"w{i + 1}") == "UP", 15)


async def test_a_rolling_restart_loses_no_conversation(tmp_path: Path) -> None:
    async with cluster(tmp_path, **FAST_TTS) as c:
        talks = [Conversation(c.url) for _ in range(20)]
        for talk in talks:
            await talk.start()
        stop = asyncio.Event()
        loops = [asyncio.create_task(keep_talking(t, stop)) for t in talks]
        try:
            await wait_until(lambda: all(len(t.memory) >= 2 for t in talks), 30)
            for i in range(WORKERS):
                await restart(c, i)
            await wait_until(lambda: all(len(t.memory) >= 6 for t in talks), 60)
        finally:
            stop.set()
            counts = await asyncio.gather(*loops)
        assert all(n >= 6 for n in counts)
        assert sum(t.resumes for t in talks) >= 1
        for t in talks:
            assert t.fresh_starts == 0, "a conversation came back as a new session"
            assert t.memory == sorted(t.memory), f"the history went backwards: {t.memory}"
            check_exactly_once(t)
            await t.close()

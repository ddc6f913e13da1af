"""Hardening matrix, per-turn state through the real server: the history stays right once it is trimmed and a
turn is cut, and nothing kept per turn grows with the number of turns (issue 13, findings 4 and 10)."""

from __future__ import annotations

import copy
from collections import deque
from typing import Any

import numpy as np

from tests.client import TEST_PIPELINE, Client, running_server, test_config
from tests.fakes.services import FakeOpenAi

Message = dict[str, Any]
PCM_BYTES_PER_MS = 32  # 16 kHz PCM16 mono


def audio_ms(msgs: list[Message]) -> float:
    return sum(len(m["data"]) for m in msgs if m["type"] == "audio") / PCM_BYTES_PER_MS


async def test_barge_in_after_the_history_was_trimmed_keeps_only_what_was_spoken() -> None:
    """``max_history_messages: 4``, three exchanges, then the fourth reply is interrupted mid-audio: the next
    request the LLM gets ends its history with exactly ``interrupted.text``, and no unspoken word of that reply
    is anywhere in it."""
    unspoken_reply = " ".join(f"alpha{i:02d}" for i in range(40))  # 4 s of tone speech, 100 ms per word
    async with FakeOpenAi() as fake:
        stages = copy.deepcopy(TEST_PIPELINE)
        stages[2] = {"name": "llm", "engine": "openai", "url": fake.url, "model": "m", "retries": 0}
        config = test_config(pipeline=stages, session={"max_history_messages": 4})
        async with running_server(config) as srv, Client.connect(srv.url) as c:
            for word in ("one", "two", "three"):
                await c.send({"type": "text", "text": word})
                assert (await c.turn())[-1]["type"] == "turn_end"
            fake.reply = unspoken_reply
            c.received.clear()
            await c.send({"type": "text", "text": "four"})
            heard = await c.recv_until(lambda _m: audio_ms(c.received) >= 600)  # the reply is well under way
            assert not [m for m in heard if m["type"] in ("turn_end", "interrupted")]
            await c.send({"type": "interrupt"})
            interrupted = await c.recv_type("interrupted")
            spoken = interrupted["text"]
            assert spoken, interrupted
            assert spoken != unspoken_reply, interrupted
            assert unspoken_reply.startswith(spoken), interrupted
            fake.reply = None
            await c.send({"type": "text", "text": "five"})
            assert (await c.turn())[-1]["type"] == "turn_end"
            assert srv.sessions  # the session is the same one
    history = fake.requests[-1].json()["messages"]
    assistant = [m["content"] for m in history if m["role"] == "assistant"]
    assert assistant[-1] == spoken, history
    heard_words = set(spoken.split())
    unheard = [w for w in unspoken_reply.split() if w not in heard_words]
    assert unheard
    assert not [w for w in unheard for m in history if w in m["content"]], history
    assert history[-1] == {"role": "user", "content": "five"}


# ---------------------------------------------------------------- bounded per-turn state


_SKIP_TYPES = (str, bytes, bytearray, int, float, bool, type(None), np.ndarray)


def container_sizes(root: object) -> dict[str, int]:
    """The size of every dict, list, set and deque reachable from ``root`` through voxpipe's own objects, by
    path (the largest where a path names several).

    A black-box check of "nothing per turn grows": it does not need to know which attribute keeps turns
    (the echo guard's old ``turn_start`` map, the playhead's timelines, the live turns, the replay log ...).
    """
    found: dict[str, int] = {}
    seen: set[int] = set()
    stack: list[tuple[object, str]] = [(root, "session")]
    while stack:
        obj, path = stack.pop()
        if id(obj) in seen or isinstance(obj, _SKIP_TYPES):
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            found[path] = max(found.get(path, 0), len(obj))
            stack.extend((v, f"{path}[{k!r}]") for k, v in list(obj.items())[:200])
        elif isinstance(obj, list | set | frozenset | deque | tuple):
            if not isinstance(obj, tuple):
                found[path] = max(found.get(path, 0), len(obj))
            stack.extend((v, f"{path}[]") for v in list(obj)[:200])
        elif type(obj).__module__.split(".")[0] in ("server", "stages", "transports", "vocab"):
            names = list(getattr(obj, "__dict__", {}))
            for cls in type(obj).__mro__:
                names += [s for s in getattr(cls, "__slots__", ()) if isinstance(s, str)]
            for name in names:
                if hasattr(obj, name):
                    stack.append((getattr(obj, name), f"{path}.{name}"))
    return found


async def test_a_thousand_unacknowledged_turns_keep_per_turn_state_bounded() -> None:
    """1,000 ``say`` turns on a client without echo cancellation (``aec: false``) that never sends ``played``:
    no container the session holds grows from turn 300 to turn 1,000 (the bounded ones are full or steady by
    then), and none holds an entry per turn."""
    stages = copy.deepcopy(TEST_PIPELINE)
    stages[3] = {"name": "tts", "engine": "tone", "word_ms": 2, "gap_ms": 0}
    config = test_config(
        pipeline=stages, session={"lead_ms": 200, "max_history_messages": 8}, limits={"messages_per_s": None}
    )
    hello = {"audio_in": {"format": "pcm16", "rate": 16000, "channels": 1, "aec": False}}
    async with running_server(config) as srv, Client.connect(srv.url, hello=hello) as c:
        session = srv.sessions[c.ready["session"]]
        assert session.echo_guard is not None  # the guard is on for this client
        sizes_at: dict[int, dict[str, int]] = {}
        for turn in range(1, 1001):
            await c.send({"type": "say", "text": "hi"})
            msgs = await c.turn()
            assert msgs[-1]["type"] == "turn_end", msgs
            assert any(m["type"] == "audio" for m in msgs)
            c.received.clear()
            if turn in (300, 1000):
                sizes_at[turn] = container_sizes(session)
    largest = sorted(((n, p) for p, n in sizes_at[1000].items()), reverse=True)[:5]
    print(f"\nlargest containers after 1,000 turns: {largest}")
    # bounded containers are full (or steady) by turn 300; one that keeps something per turn grows on to 1,000
    grown = [
        (path, sizes_at[300].get(path, 0), n)
        for path, n in sizes_at[1000].items()
        if n > max(1.5 * sizes_at[300].get(path, 0), sizes_at[300].get(path, 0) + 16)
    ]
    assert not grown, f"grew from turn 300 to turn 1,000: {grown}"
    assert largest[0][0] < 1000, f"{largest[0][1]} holds an entry per turn"

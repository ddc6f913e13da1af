"""The drop-and-resume scenario the game-engine client harnesses run (clients/unity, clients/unreal), checked
against the server's own record of the conversation.

The harness talks to the real server through a ``CuttableProxy``. It prints ``drop: ...`` in the middle of a
long turn; the test then resets the TCP connection (and may point the proxy at another server first, where
the resume cannot succeed). The client resumes on its own; its output says how (``resume: ...``), what the
conversation remembers (``reply after resume: ...``) and which messages it handled (``handled: ...``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.native import HarnessRun, field_of, live_harness
from tests.proxy import CuttableProxy

RESUMED = re.compile(
    r"resumed session (\S+) \(attempt (\d+)\), last_session_seq (\d+), handled up to (\d+), ready (\d+)"
)
NEW_SESSION = re.compile(r"new session (\S+) \((\w+)\)")
COUNTS = re.compile(r"replayed (\d+), ignored (\d+) already handled")


@dataclass(frozen=True, slots=True)
class DroppedRun:
    run: HarnessRun
    before: str  # the session id before the drop
    after: Any  # the server's Session the client ended in (its log is the record of what was sent)
    server: Any  # the server that held it

    def field(self, prefix: str) -> str:
        return field_of(self.run.output, prefix)

    @property
    def handled(self) -> list[int]:
        """session_seq of every message the client handled in its last session that a resume could replay
        (all but audio and fatal errors), in order."""
        text = self.field("handled:")
        return [int(n) for n in text.split(",")] if text else []

    @property
    def logged(self) -> list[int]:
        """session_seq of every message the server logged for the session (all but audio, ready, fatal errors)."""
        return [seq for seq, _ in self.after.log.tail()]

    def counts(self) -> tuple[int, int]:
        """(replayed messages handled, already-handled messages ignored)."""
        found = COUNTS.search(self.run.output)
        assert found, self.run.output
        return int(found.group(1)), int(found.group(2))


async def run_with_a_drop(
    args: list[str],
    servers: list[Any],
    proxy: CuttableProxy,
    *,
    move_to: Any = None,
    refuse: int = 0,
    drain: Any = None,
) -> DroppedRun:
    """Run the harness (``--drop``); cut its connection when it says ``drop:``. ``move_to``: a server the proxy
    sends the reconnect to (one that does not know the session: the resume must fail into a new session);
    ``refuse``: how many reconnects the proxy resets at once before one gets through; ``drain``: instead of a
    cut, this server drains (``going_away``, close 1001) while the proxy sends reconnects to ``move_to``."""
    async with live_harness(args) as harness:
        await harness.line_starting("drop:", 90)
        (before,) = [s for srv in servers for s in srv.sessions]
        if move_to is not None:
            proxy.upstream_port = move_to.port
        proxy.refuse = refuse
        if drain is not None:
            await drain.drain(timeout_s=0)  # no waiting for the turn in flight: going_away mid-turn
        else:
            assert proxy.cut() == 1
        line = await harness.line_starting("resume:", 30)
        after_id = line.split("session ")[1].split()[0]
        # taken while the harness still talks to it: it sends a text and waits for the answer before its bye
        server = next(srv for srv in servers if after_id in srv.sessions)
        after = server.sessions[after_id]
        run = await harness.finish(90)
    return DroppedRun(run, before, after, server)


def check_resumed(dropped: DroppedRun, *, remembers: int, rewind: int) -> None:
    """The client resumed its session mid-turn: the cut turn's end was replayed, the conversation kept its
    history, and every message the server logged was handled once, in order (``rewind``: how many
    already-handled messages the client asked for again; they must have been ignored)."""
    out = dropped.run.output
    assert dropped.run.returncode == 0, out
    assert "OK: all checks held" in out
    found = RESUMED.search(out)
    assert found, out
    session = found.group(1)
    attempts, asked_from, handled_up_to, ready_seq = (int(found.group(i)) for i in range(2, 6))
    assert session == dropped.before
    assert attempts >= 1
    assert asked_from == max(0, handled_up_to - rewind)
    assert ready_seq > handled_up_to  # the numbering went on across the reconnect
    assert re.search(r"resume: turn \d+ cut at [\d.]+ ms", out), out  # its interrupted came in the replay
    assert dropped.field("reply after resume:") == f"You said: after the drop. I remember {remembers} messages."
    logged = dropped.logged
    assert dropped.handled == logged  # every message the server logged, handled once and in order
    replayed, ignored = dropped.counts()
    missed = [s for s in logged if handled_up_to < s < ready_seq]
    assert replayed == len(missed) >= 1  # at least the cut turn's interrupted
    assert ignored == len([s for s in logged if asked_from < s <= handled_up_to])
    if rewind:
        assert ignored > 0, "the rewind asked for nothing the client had: the de-dup went untested"


ATTEMPT = re.compile(r"^reconnecting: attempt (\d+) after (\d+) ms", re.MULTILINE)


def check_backoff(dropped: DroppedRun, *, refused: int, initial_ms: int, max_ms: int) -> None:
    """Attempt 1 at once, then initial_ms doubling up to max_ms, each jittered to 50-100 %; the attempt
    after the refused ones resumed."""
    attempts = [(int(n), int(ms)) for n, ms in ATTEMPT.findall(dropped.run.output)]
    assert [n for n, _ in attempts] == list(range(1, refused + 2)), dropped.run.output
    for n, ms in attempts:
        full = 0 if n == 1 else min(max_ms, initial_ms * 2 ** (n - 2))
        assert full / 2 <= ms <= full, (n, ms)
    found = RESUMED.search(dropped.run.output)
    assert found, dropped.run.output
    assert int(found.group(2)) == refused + 1


def check_new_session(dropped: DroppedRun) -> None:
    """The resume was refused (another server): the client says so, starts a new session, remembers nothing."""
    out = dropped.run.output
    assert dropped.run.returncode == 0, out
    found = NEW_SESSION.search(out)
    assert found, out
    assert found.group(1) != dropped.before
    assert found.group(2) == "resume_failed"
    assert dropped.field("reply after resume:") == "You said: after the drop. I remember 0 messages."
    assert dropped.handled == dropped.logged  # the new session's messages, resume_failed first
    assert dropped.after.log.tail()[0][1]["code"] == "resume_failed"

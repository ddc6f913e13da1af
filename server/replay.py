"""The session's message log: ``session_seq`` for every server message, and the tail a resume replays.

Every message the session sends is numbered here, one more per message, across reconnects. Messages other
than ``audio``, ``ready`` and fatal errors are kept, as the plain maps that go on the wire, in a bounded tail
(``max_messages``; the oldest go first), so a client that lost its socket gets exactly the ones it missed.
A message is numbered and kept whether or not its socket could still take it: after a drop, what was
still queued is logged too (``server/session.py`` ``hold``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from transports import messages as m
from transports.wire import to_map

NOT_REPLAYED: frozenset[type[Any]] = frozenset({m.AudioOut, m.Ready})


class SessionLog:
    """Not thread-safe: every call runs on the session's event loop."""

    __slots__ = ("_tail", "forgotten_seq", "last_seq", "max_messages")

    def __init__(
        self,
        *,
        max_messages: int,
        last_seq: int = 0,
        tail: Iterable[tuple[int, dict[str, Any]]] = (),
        forgotten_seq: int = 0,
    ) -> None:
        self.max_messages = max_messages
        self.last_seq = last_seq
        self.forgotten_seq = forgotten_seq  # the newest message that fell off the tail
        self._tail: deque[tuple[int, dict[str, Any]]] = deque(tail)

    def stamp(self, message: Any) -> m.Sequenced:
        """The message with the next ``session_seq``; kept for replay unless it is audio or ``ready``."""
        self.last_seq += 1
        # a fatal error ended its connection: replaying it would end the resumed one too
        if type(message) not in NOT_REPLAYED and not (type(message) is m.Error and message.fatal):
            if len(self._tail) >= self.max_messages:
                self.forgotten_seq = self._tail.popleft()[0]
            self._tail.append((self.last_seq, to_map(message)))
        return m.Sequenced(self.last_seq, message)

    def since(self, seq: int) -> tuple[list[m.Sequenced], bool]:
        """Kept messages after ``seq`` in order, and whether none after ``seq`` was forgotten."""
        return [m.Sequenced(n, data) for n, data in self._tail if n > seq], seq >= self.forgotten_seq

    def tail(self) -> list[tuple[int, dict[str, Any]]]:
        return list(self._tail)

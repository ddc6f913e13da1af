"""The conversation history: chat messages, each tied to the turn that made it.

A turn's agent message is found by its turn id, never by a list index, so trimming the oldest
messages cannot make an interruption cut the wrong message (or miss its own). Bounded: at most
``max_messages`` are kept (the newest one always).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    turn: int
    role: str  # user, assistant, system
    content: str


class History:
    """The session's conversation; the LLM stage reads ``messages()`` and adds the user's message."""

    __slots__ = ("_entries", "max_messages")

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages
        self._entries: list[Entry] = []  # short (max_messages): a list is smaller than a deque

    def __len__(self) -> int:
        return len(self._entries)

    def messages(self) -> list[dict[str, str]]:
        return [{"role": e.role, "content": e.content} for e in self._entries]

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def restore(self, entries: list[tuple[int, str, str]]) -> None:
        """The history of a resumed session: (turn, role, content) as ``entries()`` gave them."""
        self._entries = [Entry(turn, role, content) for turn, role, content in entries]
        self._trim()

    def add_user(self, turn: int, text: str) -> None:
        self._entries.append(Entry(turn, "user", text))
        self._trim()

    def set_reply(self, turn: int, text: str) -> None:
        """The agent's message of ``turn``: replaced when present, else added after the turn's other messages."""
        entry = self._reply(turn)
        if entry is not None:
            entry.content = text
            return
        at = len(self._entries)
        while at > 0 and self._entries[at - 1].turn > turn:  # a later turn's message came first: go before it
            at -= 1
        self._entries.insert(at, Entry(turn, "assistant", text))
        self._trim()

    def cut_reply(self, turn: int, spoken: str) -> None:
        """``turn`` was interrupted: its agent message becomes what was spoken (gone when nothing was)."""
        if spoken:
            self.set_reply(turn, spoken)
            return
        entry = self._reply(turn)
        if entry is not None:
            self._entries.remove(entry)

    def _reply(self, turn: int) -> Entry | None:
        for entry in reversed(self._entries):
            if entry.turn == turn and entry.role == "assistant":
                return entry
            if entry.turn < turn:
                return None
        return None

    def _trim(self) -> None:
        excess = len(self._entries) - max(self.max_messages, 1)
        if excess > 0:
            del self._entries[:excess]

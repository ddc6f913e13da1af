"""The conversation history: chat messages, each tied to the turn that made it.

A turn's agent message is found by its turn id, never by a list index, so trimming the oldest
messages cannot make an interruption cut the wrong message (or miss its own). Bounded: at most
``max_messages`` are kept (the newest one always).

A client may also add messages of its own, by name (``item``), anywhere in the conversation, and
delete or cut any message; its own messages take the turn of the message before them, so the
entries stay in turn order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Entry:
    turn: int
    role: str  # user, assistant, system
    content: str
    item: str | None = None  # the client's name for a message it added itself (never a turn's own message)


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

    def find(self, *, item: str | None = None, turn: int | None = None, role: str | None = None) -> int | None:
        """Index of the client's message ``item``, or of turn ``turn``'s own message of ``role``; None if gone."""
        for i in range(len(self._entries) - 1, -1, -1):
            entry = self._entries[i]
            if item is not None:
                if entry.item == item:
                    return i
            elif entry.item is None and entry.turn == turn and entry.role == role:
                return i
        return None

    def add_item(self, item: str, role: str, text: str, *, at: int | None, turn: int) -> None:
        """A client's own message, inserted at index ``at`` (None: at the end, as of turn ``turn``)."""
        if at is None:
            self._entries.append(Entry(turn, role, text, item))
        else:
            before = self._entries[at - 1].turn if at > 0 else 0
            self._entries.insert(at, Entry(before, role, text, item))
        self._trim()

    def remove_at(self, index: int) -> None:
        del self._entries[index]

    def _reply(self, turn: int) -> Entry | None:
        for entry in reversed(self._entries):
            if entry.turn == turn and entry.role == "assistant" and entry.item is None:
                return entry
            if entry.turn < turn:
                return None
        return None

    def _trim(self) -> None:
        excess = len(self._entries) - max(self.max_messages, 1)
        if excess > 0:
            del self._entries[:excess]

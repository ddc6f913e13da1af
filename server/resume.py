"""Resume on one worker: who may pick a session up (tokens), where it is kept (the state store), and when.

- ``attach``: a new session gets its resume token, and saves its snapshot at each turn end.
- ``release``: its connection ended. A drop (the socket went away, or the server closed it to drain) holds
  the session: the turn in flight is cut at what was played, what was still queued is logged, and the
  snapshot is kept for ``resume_grace_s``. A ``bye`` or a fatal close ends it for good.
- ``find``: a ``hello.resume`` is checked (token, owner, expiry) and its snapshot loaded, after the
  session's old connection on this worker, if any, was taken over. Any failure is ``resume_failed`` and a
  fresh session (the reason goes to the server log only); never another client's conversation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from server.resume_tokens import ResumeRefused, ResumeTokens
from server.state import SafeStore, SessionState
from transports import messages as m
from vocab.metrics import METRICS

if TYPE_CHECKING:
    from server.session import Session

log = logging.getLogger("voxpipe.resume")
RESUMES_TOTAL = METRICS.counter("voxpipe_resumes_total", "Resume attempts, by outcome")
TAKEOVER_WAIT_S = 5.0  # how long a resume waits for the session's old connection here to let go


class Resumes:
    def __init__(
        self,
        store: SafeStore,
        tokens: ResumeTokens | None,
        *,
        grace_s: float | None,
        live_ttl_s: float,
        takeover: Callable[[str], Awaitable[None]],
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.grace_s = grace_s
        self.live_ttl_s = live_ttl_s  # a live session's snapshot outlives a worker killed mid-session
        self._takeover = takeover
        self._released: dict[str, asyncio.Event] = {}  # live sessions here -> set once released

    @property
    def enabled(self) -> bool:
        return self.tokens is not None and self.grace_s is not None

    def attach(self, session: Session) -> None:
        if self.tokens is None or self.grace_s is None:
            return
        session.resume_token = self.tokens.issue(session.id, session.user)
        self._released[session.id] = asyncio.Event()

        async def save(state: SessionState) -> None:
            await self.store.save(state, ttl_s=self.live_ttl_s)

        session.autosave = save

    async def release(self, session: Session, *, dropped: bool) -> None:
        """The session's connection is over: hold it for a resume (``dropped``), or end it for good."""
        released = self._released.pop(session.id, None)
        try:
            if dropped and self.enabled and self.grace_s is not None:
                await self.store.save(session.hold(), ttl_s=self.grace_s)
            else:
                session.end()
                if self.enabled:
                    await self.store.delete(session.id)
        finally:
            if released is not None:
                released.set()

    async def find(self, request: m.ResumeRequest, user: str | None) -> SessionState | None:
        """The snapshot to resume, or None (``resume_failed``; the reason is logged)."""
        try:
            state = await self._find(request, user)
        except ResumeRefused as exc:
            RESUMES_TOTAL.inc(outcome="refused")
            log.info("resume of session %.40s refused: %s", request.session, exc.message)
            return None
        RESUMES_TOTAL.inc(outcome="resumed")
        return state

    async def _find(self, request: m.ResumeRequest, user: str | None) -> SessionState:
        if self.tokens is None or self.grace_s is None:
            raise ResumeRefused("resume is off on this server (session.resume_grace_s)")
        self.tokens.check(request.token, session=request.session, user=user)
        released = self._released.get(request.session)
        if released is not None:  # still connected here (a half-open socket): take it over first
            await self._takeover(request.session)
            try:
                async with asyncio.timeout(TAKEOVER_WAIT_S):
                    await released.wait()
            except TimeoutError:
                raise ResumeRefused("the session's old connection did not let go") from None
        state, answered = await self.store.load(request.session)
        if not answered:
            raise ResumeRefused("the state store did not answer")
        if state is None:
            raise ResumeRefused("no such session (it ended, expired, or was never here)")
        if state.user != user:
            raise ResumeRefused("the session belongs to another user")
        return state

"""What a stage is: a per-process ``StageFactory`` (loads models once) that makes one ``Stage`` per session.

A stage handles one item at a time (``process``) and is told when a turn's input is complete
(``finish``); the runner forwards ``TurnDone`` itself, so a stage cannot forget to end a turn.
Interruptible stages run each item in a child task that the session cancels on barge-in.

The four stage kinds (vad, asr, llm, tts) share one generic factory, ``KindFactory``: a ``StageKind``
(edge types, options, stage class) bound to one backend (an engine such as whisper or piper).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from stages.items import Item
from vocab.telemetry import TraceOf, no_trace


class Emitter(Protocol):
    """Where a stage puts its outputs: downstream (next stage or outbox) and, tagged, to the client."""

    async def emit(self, item: Item) -> None:
        """Cancellation-safe: an item is either fully handed over or not at all."""
        ...


class Conversation(Protocol):
    """The conversation so far, as the LLM stage sees it (the session owns it)."""

    def add_user(self, turn: int, text: str) -> None:
        """The user's message of ``turn`` (the agent's is added by the session, cut to what was spoken)."""
        ...

    def messages(self) -> list[dict[str, str]]:
        """Chat messages (``{"role", "content"}``), oldest first, without the system prompt."""
        ...


@dataclass(frozen=True, slots=True)
class ReplyPlan:
    """How the agent answers one turn (the session decides per turn; the LLM and TTS stages read it).

    ``reply`` False: the user's words join the conversation, no answer is generated (a client that asks
    for answers itself). ``speak`` False: the answer is text only (no TTS). ``from_history``: answer even
    with no new user text (a response the client asked for). ``instructions`` replace the system prompt
    for this answer only.
    """

    reply: bool = True
    speak: bool = True
    from_history: bool = False
    instructions: str | None = None


ANSWER = ReplyPlan()


@dataclass(frozen=True, slots=True)
class VadOverrides:
    """Per-session turn detection over the VAD stage's configured options; None keeps the option.

    ``manual``: no endpointing by silence; every frame joins the utterance until the client commits.
    ``threshold`` (0..1, higher needs louder speech) is mapped by each VAD backend to its own scale.
    """

    manual: bool = False
    end_ms: float | None = None
    pre_roll_ms: float | None = None
    threshold: float | None = None


def always_answer(_turn: int) -> ReplyPlan:
    return ANSWER


@dataclass(slots=True)
class StageContext:
    """Per-session facts and shared state a stage may read (and the few calls it may make).

    ``system_prompt``, ``voice``, ``language`` and ``vad`` may change during the session (a client's
    settings update); stages read them when they need them rather than keeping a copy.
    """

    session_id: str
    in_rate_hz: int
    out_rate_hz: int
    system_prompt: str
    voice: str | None
    language: str | None
    conversation: Conversation
    new_turn: Callable[[], int]
    is_live: Callable[[int], bool]
    # Start a background task inside the session's task group (it ends with the session).
    spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
    # End-of-turn hints, ASR -> VAD: turn -> (audio ms of the utterance the words cover, the words sound
    # finished). The VAD ends a pause sooner after finished words, later after unfinished ones.
    turn_hints: dict[int, tuple[float, bool]] = field(default_factory=dict)
    # Turns whose words the session needs fast (voice over the agent: is it a "yeah" or a "wait"?);
    # the ASR decodes them early and often.
    urgent_turns: set[int] = field(default_factory=set)
    extra: dict[str, Any] = field(default_factory=dict)
    # How the agent answers a turn (the session's per-turn plan); the LLM and TTS stages ask per turn.
    reply_plan: Callable[[int], ReplyPlan] = always_answer
    # Per-session turn detection; the session replaces it (``Configure``), the VAD stage applies it.
    vad: VadOverrides = field(default_factory=VadOverrides)
    # The root span of a turn's trace (vocab/telemetry.py): stages hang their spans under it. The no-op
    # span when telemetry is off or the turn is over (stale work traces nothing).
    trace: TraceOf = no_trace


class Stage(Protocol):
    """One stage of one session's graph."""

    # True: each item runs in a child task that interruption cancels (LLM, TTS, ASR).
    # False: items are handled inline (cheap stages such as VAD).
    interruptible: ClassVar[bool]

    async def process(self, item: Item, out: Emitter) -> None:
        """Handle one item of the stage's input type (plus ``UserCommit``/``AudioIn`` for audio stages)."""
        ...

    async def finish(self, turn: int, out: Emitter) -> None:
        """The input of ``turn`` is complete: flush what is pending for it (final transcription, last clause)."""
        ...

    async def close(self) -> None:
        """The session is over; release per-session resources."""
        ...


class StageFactory(Protocol):
    """A stage bound to its backend and options; created once per process from config.

    ``input_type``/``output_type`` are edge types (``audio``, ``speech``, ``text``) used to type-check
    the graph at start-up. ``load`` does the slow work (model files, connection pools) and prints
    progress; ``new_stage`` must be cheap: it runs on every new connection.
    """

    input_type: str
    output_type: str

    def load(self, log: Callable[[str], None]) -> None: ...

    def new_stage(self, ctx: StageContext) -> Stage: ...

    async def aclose(self) -> None: ...


class Backend(Protocol):
    """What every engine behind a stage kind has: slow loading at start, closing at shutdown."""

    def load(self, log: Callable[[str], None]) -> None: ...

    async def aclose(self) -> None: ...


class NothingToLoad:
    """For backends with no model files and nothing to close."""

    def load(self, log: Callable[[str], None]) -> None:
        return None

    async def aclose(self) -> None:
        return None


class BaseStage:
    """Convenience base with no-op ``finish`` and ``close``; stages may also implement them directly."""

    interruptible: ClassVar[bool] = False
    # True: a cheap, non-interruptible stage that may handle an item in its producer's task when it is
    # idle on an empty inbox (one task switch less per hop; order is kept). See ``StageRunner.try_inline``.
    inline: ClassVar[bool] = False
    # the stage's config name and engine, set by ``KindFactory.new_stage`` (span attributes)
    name: str = ""
    engine: str = ""

    async def process(self, item: Item, out: Emitter) -> None:
        raise NotImplementedError

    async def finish(self, turn: int, out: Emitter) -> None:
        return None

    async def close(self) -> None:
        return None


B = TypeVar("B", bound=Backend)


@dataclass(frozen=True, slots=True)
class StageKind(Generic[B]):
    """A stage kind: the edge types it joins, its options (a dataclass), and the stage wrapping a backend."""

    name: str
    input_type: str
    output_type: str
    options: type[Any]
    stage: Callable[[Any, B, StageContext], Stage]
    # what the kind itself loads once per process beside the backend (the ASR's turn model; kept until exit)
    load: Callable[[Any, Callable[[str], None]], None] | None = None


class KindFactory(Generic[B]):
    """The ``StageFactory`` of every stage kind: the kind, its validated options, one loaded backend."""

    def __init__(self, kind: StageKind[B], options: Any, backend: B, *, name: str = "", engine: str = "") -> None:
        self.kind = kind
        self.options = options
        self.backend = backend
        self.input_type = kind.input_type
        self.output_type = kind.output_type
        self.stage_name = name or kind.name
        self.engine_name = engine

    def load(self, log: Callable[[str], None]) -> None:
        self.backend.load(log)
        if self.kind.load is not None:
            self.kind.load(self.options, log)

    def new_stage(self, ctx: StageContext) -> Stage:
        stage = self.kind.stage(self.options, self.backend, ctx)
        if isinstance(stage, BaseStage):
            stage.name, stage.engine = self.stage_name, self.engine_name
        return stage

    async def aclose(self) -> None:
        await self.backend.aclose()

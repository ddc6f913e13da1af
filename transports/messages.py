"""Every message of wire contract v1 as a frozen dataclass; class names follow the contract's types.

Client messages are what ``wire.decode`` returns; server messages are what ``wire.encode`` takes.
Field types here are the single source for decoding, validation and the JSON Schema at ``/schema``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

PROTOCOL_VERSION = 1
Send = Callable[[Any], Awaitable[None]]  # sends one server message to the client (cancellation-safe)
AUDIO_RATES_HZ = (8000, 16000, 24000, 48000)


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """PCM format of one direction; only mono PCM16 little-endian exists in v1.

    ``aec`` (input only) says whether the client cancels the agent's echo itself; ``False``
    turns on the server's echo guard for barge-in.
    """

    format: Literal["pcm16"] = "pcm16"
    rate: int = 16000
    channels: int = 1
    aec: bool | None = None


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """Per-session overrides sent in ``hello.session``.

    ``barge_in``: ``words`` (voice over the agent pauses it and the words decide: a backchannel or no
    words resume it, anything else interrupts) or ``immediate`` (sustained voice interrupts at once).
    """

    system_prompt: str | None = None
    voice: str | None = None
    language: str | None = None
    barge_in: Literal["immediate", "words"] | None = None
    backchannels: list[str] | None = None  # words that do not take the floor ("yeah", "uh-huh", ...)
    barge_in_window_ms: float | None = None  # how soon after the voice began the words should decide


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """``hello.resume``: pick up session ``session`` after a lost socket (wire contract, "Resume")."""

    session: str
    token: str  # the ``resume_token`` of the session's ``ready``
    last_session_seq: int = 0  # the highest ``session_seq`` the client received


# ---------------------------------------------------------------- client -> server


@dataclass(frozen=True, slots=True)
class Hello:
    type: ClassVar[str] = "hello"
    protocol: int
    audio_in: AudioFormat = field(default_factory=AudioFormat)
    audio_out: AudioFormat = field(default_factory=AudioFormat)
    subscribe: list[str] | str | None = None
    token: str | None = None
    session: SessionOptions | None = None
    resume: ResumeRequest | None = None


@dataclass(frozen=True, slots=True)
class Audio:
    """Client audio (PCM16 LE mono at ``audio_in.rate``); enters at the first audio stage."""

    type: ClassVar[str] = "audio"
    data: bytes


@dataclass(frozen=True, slots=True)
class Text:
    """User text; enters at the LLM stage."""

    type: ClassVar[str] = "text"
    text: str


@dataclass(frozen=True, slots=True)
class Say:
    """Text the agent speaks verbatim; enters at the TTS stage."""

    type: ClassVar[str] = "say"
    text: str


@dataclass(frozen=True, slots=True)
class Input:
    """Enter the graph at any stage, by ``stage`` name or ``entry`` index into ``ready.graph``."""

    type: ClassVar[str] = "input"
    data: bytes | str
    stage: str | None = None
    entry: int | None = None


@dataclass(frozen=True, slots=True)
class Commit:
    type: ClassVar[str] = "commit"


@dataclass(frozen=True, slots=True)
class Interrupt:
    type: ClassVar[str] = "interrupt"


@dataclass(frozen=True, slots=True)
class Played:
    """The client has actually played ``ms`` of turn ``turn``'s audio."""

    type: ClassVar[str] = "played"
    turn: int
    ms: float


@dataclass(frozen=True, slots=True)
class Ping:
    type: ClassVar[str] = "ping"
    id: Any = None


@dataclass(frozen=True, slots=True)
class Bye:
    type: ClassVar[str] = "bye"


@dataclass(frozen=True, slots=True)
class WebrtcOffer:
    """WebRTC call-in signaling: the client's SDP offer (answered by ``webrtc_answer``)."""

    type: ClassVar[str] = "webrtc_offer"
    sdp: str


ClientMessage = Hello | Audio | Text | Say | Input | Commit | Interrupt | Played | Ping | Bye | WebrtcOffer
CLIENT_MESSAGES: tuple[type[Any], ...] = (
    Hello,
    Audio,
    Text,
    Say,
    Input,
    Commit,
    Interrupt,
    Played,
    Ping,
    Bye,
    WebrtcOffer,
)


# ---------------------------------------------------------------- server -> client


@dataclass(frozen=True, slots=True)
class GraphNode:
    name: str
    engine: str
    # "in"/"out" are Python keywords; the wire names are set in ``wire.WIRE_NAMES``.
    input: str
    output: str


@dataclass(frozen=True, slots=True)
class Ready:
    type: ClassVar[str] = "ready"
    session: str
    graph: list[GraphNode]
    audio_in: AudioFormat
    audio_out: AudioFormat
    protocol: int = PROTOCOL_VERSION
    resume_token: str | None = None  # opaque; send it back in hello.resume after a lost socket
    resumed: bool = False  # true: this is the session of hello.resume, picked up where it was


@dataclass(frozen=True, slots=True)
class Vad:
    type: ClassVar[str] = "vad"
    stage: str
    turn: int
    event: Literal["speech_start", "speech_end"]
    audio_ms: float | None = None  # where on the input clock (ms of audio received in the session)


@dataclass(frozen=True, slots=True)
class Transcript:
    type: ClassVar[str] = "transcript"
    stage: str
    turn: int
    text: str
    final: bool


@dataclass(frozen=True, slots=True)
class Reply:
    type: ClassVar[str] = "reply"
    stage: str
    turn: int
    text: str
    final: bool = False


@dataclass(frozen=True, slots=True)
class AudioOut:
    """Agent audio: PCM16 LE mono at ``audio_out.rate``; ``seq`` counts 0,1,2… within the turn."""

    type: ClassVar[str] = "audio"
    stage: str
    turn: int
    seq: int
    data: bytes


@dataclass(frozen=True, slots=True)
class TurnEnd:
    type: ClassVar[str] = "turn_end"
    turn: int


@dataclass(frozen=True, slots=True)
class Interrupted:
    type: ClassVar[str] = "interrupted"
    turn: int
    played_ms: float
    text: str


@dataclass(frozen=True, slots=True)
class AgentPaused:
    """Voice started over the agent: its audio is held (clients pause playback) while the words decide."""

    type: ClassVar[str] = "agent_paused"
    turn: int


@dataclass(frozen=True, slots=True)
class AgentResumed:
    """The voice over the agent was a backchannel or no words: the agent goes on where it paused."""

    type: ClassVar[str] = "agent_resumed"
    turn: int


@dataclass(frozen=True, slots=True)
class Metrics:
    """Per-turn latency: time from the end of the user's input to each stage's first output."""

    type: ClassVar[str] = "metrics"
    turn: int
    first_output_ms: dict[str, float]
    voice_to_voice_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Error:
    type: ClassVar[str] = "error"
    code: str
    message: str
    fatal: bool = False
    turn: int | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    type: ClassVar[str] = "pong"
    id: Any = None


@dataclass(frozen=True, slots=True)
class WebrtcAnswer:
    type: ClassVar[str] = "webrtc_answer"
    sdp: str


@dataclass(frozen=True, slots=True)
class Sequenced:
    """A server message with its place in the session: ``session_seq`` on the wire, one more per message,
    across reconnects. ``message`` is a server message, or its plain map when replayed from the log."""

    seq: int
    message: Any


# ---------------------------------------------------------------- session-level requests (no /ws message)
# What a second wire dialect (transports/realtime.py) asks of the session beyond wire contract v1. They are
# not in CLIENT_MESSAGES: /ws does not decode them, and the schema at /schema does not list them. The
# session answers a request that carries a ``ref`` with ``Ack``; ``Relay`` lets the dialect's own replies
# go out through the session's one writer, in order with everything else.


@dataclass(frozen=True, slots=True)
class TurnDetection:
    """How the session finds the end of the user's turn; None fields keep the pipeline's VAD options.

    ``manual``: no endpointing; the client commits. ``threshold`` 0..1 (higher needs louder speech).
    ``create_response``: a finished utterance is answered. ``interrupt_response``: voice over the agent
    cuts it off (barge-in).
    """

    manual: bool = False
    silence_ms: float | None = None
    prefix_ms: float | None = None
    threshold: float | None = None
    create_response: bool = True
    interrupt_response: bool = True


@dataclass(frozen=True, slots=True)
class Configure:
    """Change session settings mid-conversation; fields left None stay as they are."""

    type: ClassVar[str] = "configure"
    system_prompt: str | None = None
    voice: str | None = None
    language: str | None = None
    speak: bool | None = None  # False: answers are text only (no TTS)
    turn_detection: TurnDetection | None = None


@dataclass(frozen=True, slots=True)
class ItemRef:
    """One message of the conversation: one a client added by name (``item``), or turn ``turn``'s message
    of ``role`` (user: what the user said; assistant: the agent's answer)."""

    item: str | None = None
    turn: int | None = None
    role: str | None = None


@dataclass(frozen=True, slots=True)
class AddMessage:
    """Put a message into the conversation without answering it: after ``after``, at the start when
    ``first``, else at the end."""

    type: ClassVar[str] = "add_message"
    item: str
    role: Literal["user", "assistant", "system"]
    text: str
    after: ItemRef | None = None
    first: bool = False


@dataclass(frozen=True, slots=True)
class AddAudio:
    """User audio (PCM16 at the session's input rate) transcribed into the conversation, not answered.
    Acked with the turn the transcript belongs to."""

    type: ClassVar[str] = "add_audio"
    ref: str
    pcm: bytes


@dataclass(frozen=True, slots=True)
class DeleteItem:
    type: ClassVar[str] = "delete_item"
    item: ItemRef


@dataclass(frozen=True, slots=True)
class TruncateReply:
    """The client played only ``audio_ms`` of turn ``turn``'s answer: cut it (and its text) there."""

    type: ClassVar[str] = "truncate_reply"
    turn: int
    audio_ms: float


@dataclass(frozen=True, slots=True)
class CreateResponse:
    """Answer now from the conversation as it is (after the input already committed). Acked with the new
    turn, or refused (``conversation_already_has_active_response`` when one is running)."""

    type: ClassVar[str] = "create_response"
    ref: str
    instructions: str | None = None
    speak: bool | None = None  # None: the session's setting


@dataclass(frozen=True, slots=True)
class ClearInput:
    """Forget the user's input audio not yet committed."""

    type: ClassVar[str] = "clear_input"


@dataclass(frozen=True, slots=True)
class Relay:
    """A reply of the connection protocol to its own client, sent by the session's writer in order."""

    type: ClassVar[str] = "relay"
    message: Any


@dataclass(frozen=True, slots=True)
class Ack:
    """The session's answer to a request with a ``ref``: the turn it opened, or why it refused (``code``)."""

    type: ClassVar[str] = "ack"
    ref: str
    turn: int | None = None
    code: str | None = None
    message: str | None = None


SESSION_REQUESTS: tuple[type[Any], ...] = (
    Configure,
    AddMessage,
    AddAudio,
    DeleteItem,
    TruncateReply,
    CreateResponse,
    ClearInput,
)


ServerMessage = (
    Ready
    | Vad
    | Transcript
    | Reply
    | AudioOut
    | TurnEnd
    | Interrupted
    | AgentPaused
    | AgentResumed
    | Metrics
    | Error
    | Pong
    | WebrtcAnswer
)
SERVER_MESSAGES: tuple[type[Any], ...] = (
    Ready,
    Vad,
    Transcript,
    Reply,
    AudioOut,
    TurnEnd,
    Interrupted,
    AgentPaused,
    AgentResumed,
    Metrics,
    Error,
    Pong,
    WebrtcAnswer,
)

"""Wiring of the OpenAI Realtime endpoint (``GET /v1/realtime?model=...``) into the server.

The protocol object is ``transports/realtime.py``; here the server picks it for the path, chooses the
dialect (beta when the client sends ``OpenAI-Beta: realtime=v1`` or offers the ``openai-beta.realtime-v1``
subprotocol, else GA), answers the browser subprotocols (``realtime``, ``openai-insecure-api-key.<key>``:
the key is read by ``server/auth.py``, never echoed), lets Realtime events be as large as the API allows,
and builds what ``session.created`` reports from the config and the pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from server.config import Config
from stages.registry import StageSpec
from transports.limits import LimitOptions
from transports.realtime import RealtimeConnection, RealtimeOptions
from transports.realtime_config import RealtimeConfig, TurnDetectionConfig
from transports.realtime_vocab import BETA, BETA_SUBPROTOCOL, GA
from vocab.options import build

REALTIME_SUBPROTOCOL = Subprotocol("realtime")
DEFAULT_MODEL = "voxpipe"


def realtime_options(config: Config) -> RealtimeOptions:
    """The ``realtime`` section (ConfigError naming a bad key)."""
    options: RealtimeOptions = build(RealtimeOptions, config.extra.get("realtime"), "realtime")
    return options


def _offered(request: Request) -> list[str]:
    return [p.strip() for value in request.headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",")]


def is_realtime(options: RealtimeOptions, request: Request | None) -> bool:
    if request is None or not options.enabled:
        return False
    return unquote(urlsplit(request.path).path) == options.path


def is_beta(request: Request) -> bool:
    beta_header = any("realtime=v1" in value for value in request.headers.get_all("OpenAI-Beta"))
    return beta_header or BETA_SUBPROTOCOL in _offered(request)


def subprotocol_selector(options: RealtimeOptions) -> Callable[[Any, Sequence[Subprotocol]], Subprotocol | None]:
    """websockets' ``select_subprotocol``: ``realtime`` on the Realtime path when offered, else none (as
    before: ``/ws`` speaks no subprotocol). A browser that offers subprotocols needs one chosen."""

    def select(connection: Any, subprotocols: Sequence[Subprotocol]) -> Subprotocol | None:
        if not is_realtime(options, connection.request):
            return None
        if REALTIME_SUBPROTOCOL in subprotocols:
            return REALTIME_SUBPROTOCOL
        if BETA_SUBPROTOCOL in subprotocols:
            return Subprotocol(BETA_SUBPROTOCOL)
        return None

    return select


def response_hook(options: RealtimeOptions) -> Callable[[Any, Request, Response], None]:
    """websockets' ``process_response``: a Realtime connection reads events up to ``max_event_bytes``
    (``/ws`` keeps ``server.max_frame_bytes``). Set before the 101 goes out, so before any client frame."""

    def widen(connection: Any, request: Request, response: Response) -> None:
        if response.status_code == 101 and is_realtime(options, request):
            connection.protocol.max_message_size = options.max_event_bytes

    return widen


def initial_config(config: Config, specs: list[StageSpec], request: Request) -> RealtimeConfig:
    """What ``session.created`` reports: the session defaults and the pipeline's own turn detection."""
    query = parse_qs(urlsplit(request.path).query)
    model = (query.get("model") or [DEFAULT_MODEL])[0][:200]
    vad = next((s for s in specs if s.kind == "vad"), None)
    detection = None
    if vad is not None:
        opts = getattr(vad.factory, "options", None)
        detection = TurnDetectionConfig(
            prefix_padding_ms=int(getattr(opts, "pre_roll_ms", 300)),
            silence_duration_ms=int(getattr(opts, "end_ms", 500)),
        )
    asr = next((s for s in specs if s.kind == "asr"), None)
    transcription = None if asr is None else {"model": asr.engine_name, "language": config.session.language}
    tts = next((s for s in specs if s.kind == "tts"), None)
    return RealtimeConfig(
        model=model,
        instructions=config.session.system_prompt,
        voice=config.session.voice or (tts.engine_name if tts is not None else "none"),
        speak=tts is not None,
        transcription=transcription,
        turn_detection=detection,
    )


def realtime_connection(
    config: Config, specs: list[StageSpec], options: RealtimeOptions, request: Request, *, now: float
) -> RealtimeConnection:
    limits: LimitOptions = config.limits
    return RealtimeConnection(
        vocab=BETA if is_beta(request) else GA,
        config=initial_config(config, specs, request),
        limits=limits,
        options=options,
        now=now,
    )

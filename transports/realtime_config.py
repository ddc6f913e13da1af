"""A Realtime session's configuration as the client sees it: ``session.update`` in, the session object out.

``apply_update`` checks a ``session.update`` (GA nested ``audio.input``/``audio.output``, or beta's flat
fields) against the current ``RealtimeConfig`` and returns the new config plus the ``Configure`` the
session needs, or a ``ConfigError`` naming the bad parameter. ``session_object`` reports the config back
(``session.created``, ``session.updated``). Accepted and reported but without effect here: ``tools``
(reported as unsupported, left empty), ``noise_reduction``, ``speed``, ``temperature``,
``max_output_tokens``, ``idle_timeout_ms``; ``semantic_vad`` works as ``server_vad``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from transports import messages as m
from transports.realtime_vocab import BETA_FORMATS, GA_FORMATS, Format, Vocab


@dataclass(frozen=True, slots=True)
class TurnDetectionConfig:
    type: str = "server_vad"  # or semantic_vad (served as server_vad)
    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True


@dataclass(frozen=True, slots=True)
class RealtimeConfig:
    model: str
    instructions: str
    voice: str
    speak: bool = True
    input_format: Format = "pcm"
    output_format: Format = "pcm"
    transcription: dict[str, Any] | None = None
    turn_detection: TurnDetectionConfig | None = field(default_factory=TurnDetectionConfig)
    max_output_tokens: int | str = "inf"
    temperature: float = 0.8
    speed: float = 1.0


class ConfigError(Exception):
    """A ``session.update`` the session cannot take: ``param`` is the API's path of the bad field."""

    def __init__(self, param: str, message: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Update:
    config: RealtimeConfig
    configure: m.Configure
    ignored_tools: bool  # tools were sent: accepted, reported as unsupported


def _number(value: Any, param: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(param, f"Invalid type for '{param}': expected a number", "invalid_type")
    if not low <= value <= high:
        raise ConfigError(param, f"Invalid '{param}': must be between {low:g} and {high:g}, got {value}")
    return float(value)


def _bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(param, f"Invalid type for '{param}': expected a boolean", "invalid_type")
    return value


def _str(value: Any, param: str, max_chars: int | None) -> str:
    if not isinstance(value, str):
        raise ConfigError(param, f"Invalid type for '{param}': expected a string", "invalid_type")
    if max_chars is not None and len(value) > max_chars:
        raise ConfigError(param, f"Invalid '{param}': over {max_chars} characters", "string_above_max_length")
    return value


def _map(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(param, f"Invalid type for '{param}': expected an object", "invalid_type")
    return value


def parse_format(vocab: Vocab, value: Any, param: str) -> Format:
    """An audio format of the dialect: GA ``{"type": "audio/pcm", "rate": 24000}``, beta ``"pcm16"``."""
    if vocab.beta:
        if value not in BETA_FORMATS:
            raise ConfigError(param, f"Invalid value for '{param}': supported are {', '.join(BETA_FORMATS)}")
        return BETA_FORMATS[value]
    fmt = _map(value, param)
    kind = fmt.get("type")
    if kind not in GA_FORMATS:
        raise ConfigError(f"{param}.type", f"Invalid value for '{param}.type': supported are {', '.join(GA_FORMATS)}")
    if kind == "audio/pcm" and fmt.get("rate", 24000) != 24000:
        raise ConfigError(f"{param}.rate", f"Invalid '{param}.rate': audio/pcm is 24000 Hz only")
    return GA_FORMATS[kind]


def _turn_detection(value: Any, param: str, current: TurnDetectionConfig | None) -> TurnDetectionConfig | None:
    if value is None:
        return None
    data = _map(value, param)
    base = current or TurnDetectionConfig()
    kind = data.get("type", base.type)
    if kind not in ("server_vad", "semantic_vad"):
        raise ConfigError(f"{param}.type", f"Invalid value for '{param}.type': server_vad or semantic_vad")
    changes: dict[str, Any] = {"type": kind}
    if data.get("threshold") is not None:
        changes["threshold"] = _number(data["threshold"], f"{param}.threshold", 0.0, 1.0)
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if data.get(key) is not None:
            changes[key] = int(_number(data[key], f"{param}.{key}", 0 if key == "prefix_padding_ms" else 20, 10000))
    for key in ("create_response", "interrupt_response"):
        if data.get(key) is not None:
            changes[key] = _bool(data[key], f"{param}.{key}")
    return dataclasses.replace(base, **changes)


def apply_update(vocab: Vocab, data: Any, config: RealtimeConfig, *, max_text_chars: int | None) -> Update:
    """The new config and the session's ``Configure`` for a ``session.update``'s ``session``."""
    session = _map(data, "session")
    changes: dict[str, Any] = {}
    configure: dict[str, Any] = {}
    if not vocab.beta and session.get("type") not in (None, "realtime"):
        raise ConfigError("session.type", "Only 'realtime' sessions are served here (no transcription sessions)")
    if session.get("instructions") is not None:
        changes["instructions"] = configure["system_prompt"] = _str(
            session["instructions"], "session.instructions", max_text_chars
        )
    if session.get("model") is not None:
        changes["model"] = _str(session["model"], "session.model", 200)
    modalities_key = "modalities" if vocab.beta else "output_modalities"
    if session.get(modalities_key) is not None:
        changes["speak"] = configure["speak"] = _speak(session[modalities_key], f"session.{modalities_key}")
    if vocab.beta:
        audio_in: dict[str, Any] = {
            k: session[k] for k in ("turn_detection", "input_audio_transcription") if k in session
        }
        if "input_audio_transcription" in audio_in:
            audio_in["transcription"] = audio_in.pop("input_audio_transcription")
        if session.get("input_audio_format") is not None:
            changes["input_format"] = parse_format(vocab, session["input_audio_format"], "session.input_audio_format")
        if session.get("output_audio_format") is not None:
            param = "session.output_audio_format"
            changes["output_format"] = parse_format(vocab, session["output_audio_format"], param)
        voice, in_param = session.get("voice"), "session"
    else:
        audio = _map(session.get("audio") or {}, "session.audio")
        audio_in = _map(audio.get("input") or {}, "session.audio.input")
        audio_out = _map(audio.get("output") or {}, "session.audio.output")
        if audio_in.get("format") is not None:
            changes["input_format"] = parse_format(vocab, audio_in["format"], "session.audio.input.format")
        if audio_out.get("format") is not None:
            changes["output_format"] = parse_format(vocab, audio_out["format"], "session.audio.output.format")
        voice, in_param = audio_out.get("voice"), "session.audio.input"
    if voice is not None:
        name = voice.get("id") if isinstance(voice, dict) else voice
        changes["voice"] = configure["voice"] = _str(name, "session.voice", 200)
    if "transcription" in audio_in:
        transcription = audio_in["transcription"]
        changes["transcription"] = None if transcription is None else _map(transcription, f"{in_param}.transcription")
        language = (changes["transcription"] or {}).get("language")
        if language is not None:
            configure["language"] = _str(language, f"{in_param}.transcription.language", 16)
    if "turn_detection" in audio_in:
        detection = _turn_detection(audio_in["turn_detection"], f"{in_param}.turn_detection", config.turn_detection)
        changes["turn_detection"] = detection
        configure["turn_detection"] = session_turn_detection(detection)
    if session.get("temperature") is not None:
        changes["temperature"] = _number(session["temperature"], "session.temperature", 0.0, 2.0)
    tokens_key = "max_response_output_tokens" if vocab.beta else "max_output_tokens"
    if session.get(tokens_key) is not None:
        value = session[tokens_key]
        changes["max_output_tokens"] = (
            "inf" if value == "inf" else int(_number(value, f"session.{tokens_key}", 1, 4096))
        )
    tools = session.get("tools")
    return Update(
        config=dataclasses.replace(config, **changes),
        configure=m.Configure(**configure),
        ignored_tools=isinstance(tools, list) and bool(tools),
    )


def _speak(value: Any, param: str) -> bool:
    if not isinstance(value, list) or not value or any(v not in ("text", "audio") for v in value):
        raise ConfigError(param, f"Invalid value for '{param}': a list of 'text' and/or 'audio'")
    return "audio" in value


def response_speak(vocab: Vocab, response: dict[str, Any]) -> bool | None:
    """A ``response.create``'s own modalities: True (audio), False (text only), None (the session's)."""
    key = "modalities" if vocab.beta else "output_modalities"
    value = response.get(key)
    return None if value is None else _speak(value, f"response.{key}")


def session_turn_detection(detection: TurnDetectionConfig | None) -> m.TurnDetection:
    """What the session needs of a turn detection config (None: the client commits, nothing automatic)."""
    if detection is None:
        return m.TurnDetection(manual=True, create_response=False, interrupt_response=False)
    return m.TurnDetection(
        silence_ms=detection.silence_duration_ms,
        prefix_ms=detection.prefix_padding_ms,
        threshold=detection.threshold,
        create_response=detection.create_response,
        interrupt_response=detection.interrupt_response,
    )


def session_object(vocab: Vocab, config: RealtimeConfig, session_id: str) -> dict[str, Any]:
    """The session as ``session.created``/``session.updated`` report it, in the dialect's shape."""
    detection = None
    if config.turn_detection is not None:
        detection = dataclasses.asdict(config.turn_detection)
        if not vocab.beta:
            detection["idle_timeout_ms"] = None
    common: dict[str, Any] = {
        "id": session_id,
        "object": "realtime.session",
        "model": config.model,
        **vocab.modalities(config.speak),
        "instructions": config.instructions,
        "tools": [],
        "tool_choice": "auto",
        "tracing": None,
    }
    if vocab.beta:
        return {
            **common,
            "voice": config.voice,
            "input_audio_format": vocab.format_object(config.input_format),
            "output_audio_format": vocab.format_object(config.output_format),
            "input_audio_transcription": config.transcription,
            "input_audio_noise_reduction": None,
            "turn_detection": detection,
            "temperature": config.temperature,
            "max_response_output_tokens": config.max_output_tokens,
            "speed": config.speed,
        }
    return {
        "type": "realtime",
        **common,
        "max_output_tokens": config.max_output_tokens,
        "prompt": None,
        "include": None,
        "audio": {
            "input": {
                "format": vocab.format_object(config.input_format),
                "transcription": config.transcription,
                "noise_reduction": None,
                "turn_detection": detection,
            },
            "output": {
                "format": vocab.format_object(config.output_format),
                "voice": config.voice,
                "speed": config.speed,
            },
        },
    }

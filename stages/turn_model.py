"""Does the voice sound finished? The audio half of end-of-turn detection: Smart Turn v3 on CPU.

The words (``stages/endpointing.py``) catch "a flight to", but not a misheard last word: tiny Whisper
hears "Turn off the lights in the" as "...in there." and "a pizza with" as "a pizza list.", which read as
whole sentences. Pipecat's Smart Turn v3.2 (BSD-2-Clause, 8.7 MB int8 ONNX, a Whisper-tiny encoder with a
classifier) scores the last 8 s of audio for a finished turn from its sound: pitch, lengthening, breath.
Its weights ship inside the ``pipecat-ai`` wheel; the Makefile installs that wheel without its
dependencies, and the file is found through the package metadata (pipecat is never imported). One
inference costs ~32 ms of one core here and runs in its own bounded executor, beside the pause's
speculative decode, so it adds no latency to the endpoint. The ASR stage's ``turn_model`` option turns it
on; a turn then ends quickly only when the words *and* the voice sound finished.
"""

from __future__ import annotations

import importlib.metadata
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stages.executor import SHEDDABLE, BoundedExecutor
from vocab.errors import ConfigError, StageError

RATE_HZ = 16000
WINDOW_S = 8  # the model scores the last 8 s (shorter audio is padded with silence in front)
MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
MODELS = ("none", "smart-turn")
_N_FFT, _HOP, _N_MELS = 400, 160, 80


def _mel_filters() -> np.ndarray:
    """Whisper's 80 Slaney-normalised triangular mel filters over 0..8 kHz, shape (80, 201)."""

    def to_mel(hz: np.ndarray) -> np.ndarray:
        return np.where(hz < 1000, 3 * hz / 200, 15 + np.log(np.maximum(hz, 1e-9) / 1000) * 27 / np.log(6.4))

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(mel < 15, 200 * mel / 3, 1000 * np.exp((mel - 15) * np.log(6.4) / 27))

    edges = to_hz(np.linspace(to_mel(np.array(0.0)), to_mel(np.array(RATE_HZ / 2)), _N_MELS + 2))
    bins = np.linspace(0, RATE_HZ / 2, _N_FFT // 2 + 1)
    slopes = edges[None, :] - bins[:, None]
    down = -slopes[:, :-2] / np.diff(edges)[:-1]
    up = slopes[:, 2:] / np.diff(edges)[1:]
    filters: np.ndarray = np.maximum(0, np.minimum(down, up)) * (2 / (edges[2:] - edges[:-2]))[None, :]
    return filters.T


_FILTERS = _mel_filters()
_WINDOW = np.hanning(_N_FFT + 1)[:-1]  # periodic Hann, as torch's


def log_mel(samples: np.ndarray) -> np.ndarray:
    """Whisper's log-mel features (as ``transformers.WhisperFeatureExtractor(chunk_length=8)`` with
    ``do_normalize``) of the last 8 s of ``samples`` (float, 16 kHz), shape (80, 800)."""
    n = RATE_HZ * WINDOW_S
    x = samples[-n:].astype(np.float32)
    x = np.pad(x, (n - x.size, 0))
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), _N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=-1)) ** 2
    mel = np.log10(np.maximum(1e-10, _FILTERS @ power.T))[:, :-1]
    mel = np.maximum(mel, mel.max() - 8.0)
    features: np.ndarray = ((mel + 4.0) / 4.0).astype(np.float32)
    return features


def model_path() -> Path:
    """The ONNX file inside the installed ``pipecat-ai`` wheel, found without importing pipecat."""
    try:
        found = Path(str(importlib.metadata.distribution("pipecat-ai").locate_file(MODEL_FILE)))
    except importlib.metadata.PackageNotFoundError:
        found = None
    if found is None or not found.is_file():
        raise ConfigError(
            "asr.turn_model: smart-turn needs the pipecat-ai wheel for its weights (`make install` adds it "
            "with --no-deps); or set turn_model: none"
        )
    return found


class SmartTurn:
    """One loaded Smart Turn session, shared by every session (and server) of the process until it exits:
    an idle one holds its weights and one idle thread."""

    def __init__(self, path: Path, log: Callable[[str], None]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # ~32 ms a call on one core; the other core stays with the models
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # no warnings about unused initialisers on every start
        self.session: Any = ort.InferenceSession(str(path), sess_options=options)
        # overflow: a call beyond 1 running + 4 waiting is shed (the words alone decide that pause)
        self.executor = BoundedExecutor("smart-turn", max_workers=1, max_waiting=4)
        started = time.perf_counter()
        self._score(bytes(RATE_HZ))  # warm-up: the first call sets up the session's buffers (0.5 s of silence)
        warm_ms = (time.perf_counter() - started) * 1000
        size_mb = path.stat().st_size / 1e6
        log(f"voxpipe: turn model Smart Turn v3.2 loaded ({size_mb:.1f} MB; a score takes {warm_ms:.0f} ms)")

    def _score(self, pcm: bytes) -> float:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
        out = self.session.run(None, {"input_features": log_mel(samples)[None]})
        return float(out[0].reshape(-1)[0])

    async def finished_prob(self, pcm: bytes, rate_hz: int) -> float | None:
        """The probability (0..1) that the speaker is done, from the audio of the utterance so far; None
        when the executor is full (the words alone decide then)."""
        if rate_hz != RATE_HZ:
            from stages.resample import resample

            pcm = resample(pcm, rate_hz, RATE_HZ)
        try:
            result: float = await self.executor.run(self._score, pcm, priority=SHEDDABLE)
        except StageError as exc:
            if exc.code == "busy":
                return None
            raise
        return result


_loaded: dict[str, SmartTurn] = {}


def load(name: str, log: Callable[[str], None]) -> SmartTurn | None:
    """The process's turn model ``name`` (loaded on first use), or None for ``none``."""
    if name == "none":
        return None
    if name not in _loaded:
        _loaded[name] = SmartTurn(model_path(), log)
    return _loaded[name]

"""G.711 (mu-law, A-law) at 8 kHz <-> PCM16 at 24 kHz, for Realtime clients that bridge telephony.

The session always runs at 24 kHz PCM16; a client that speaks ``audio/pcmu`` or ``audio/pcma`` (8 kHz, one
byte per sample) is converted here, in the connection protocol, one append or one audio delta at a time.
The companding follows ITU-T G.711 (the classic Sun reference code; tested sample for sample against
CPython's ``audioop``). The 3:1 rate change is a streaming polyphase FIR (Kaiser-windowed sinc, 3.6 kHz
cutoff): chunked conversion equals one-shot conversion, so 20 ms pieces join without clicks.
numpy only: transports/ must not import stages/ (whose resampler is FFmpeg's).
"""

from __future__ import annotations

from functools import cache
from typing import Literal

import numpy as np

Codec = Literal["pcmu", "pcma"]
RATIO = 3  # 24 kHz / 8 kHz
_TAPS = 97  # 4 ms at 24 kHz; odd, so the delay is a whole 48 samples (2 ms)
_CUTOFF_HZ = 3600.0
_HIGH_RATE_HZ = 24000

# mu-law on the 14-bit magnitude, as the reference code (and CPython's audioop) do it
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
# A-law segment ends, on the 13-bit magnitude
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def _ulaw_encode(x: np.ndarray) -> np.ndarray:
    pcm = x >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_ULAW_SEG_END, mag, side="left")
    uval = (np.minimum(seg, 7) << 4) | ((mag >> (np.minimum(seg, 7) + 1)) & 0x0F)
    uval = np.where(seg >= 8, 0x7F, uval)
    return (uval ^ mask) & 0xFF


def _ulaw_decode(u: np.ndarray) -> np.ndarray:
    u = ~u & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    mag = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(u & 0x80, -mag, mag)


def _alaw_encode(x: np.ndarray) -> np.ndarray:
    pcm = x >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    pcm = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = np.searchsorted(_ALAW_SEG_END, pcm, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((pcm >> shift) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    return (aval ^ mask) & 0xFF


def _alaw_decode(a: np.ndarray) -> np.ndarray:
    a = a ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t)


@cache
def _encode_table(codec: Codec) -> np.ndarray:
    """Byte for every int16 value, indexed by ``sample + 32768``."""
    x = np.arange(-32768, 32768, dtype=np.int32)
    return (_ulaw_encode(x) if codec == "pcmu" else _alaw_encode(x)).astype(np.uint8)


@cache
def _decode_table(codec: Codec) -> np.ndarray:
    b = np.arange(256, dtype=np.int32)
    return (_ulaw_decode(b) if codec == "pcmu" else _alaw_decode(b)).astype("<i2")


def encode(pcm: bytes, codec: Codec) -> bytes:
    """PCM16 LE samples (any rate) -> one G.711 byte per sample."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    return _encode_table(codec)[samples + 32768].tobytes()


def decode(data: bytes, codec: Codec) -> bytes:
    """G.711 bytes -> PCM16 LE samples, one per byte."""
    return _decode_table(codec)[np.frombuffer(data, dtype=np.uint8)].tobytes()


@cache
def _lowpass() -> np.ndarray:
    n = np.arange(_TAPS) - (_TAPS - 1) / 2
    fc = _CUTOFF_HZ / _HIGH_RATE_HZ
    taps: np.ndarray = 2 * fc * np.sinc(2 * fc * n) * np.kaiser(_TAPS, 8.0)
    normalized: np.ndarray = taps / taps.sum()  # unity gain at DC
    return normalized


def _to_pcm16(samples: np.ndarray) -> bytes:
    pcm: bytes = np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
    return pcm


class Upsampler:
    """8 kHz -> 24 kHz PCM16, streaming (three output samples per input sample, 2 ms of filter delay)."""

    def __init__(self) -> None:
        self._history = np.zeros(_TAPS - 1)

    def process(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        stuffed = np.zeros(len(samples) * RATIO)
        stuffed[::RATIO] = samples * RATIO
        buffer = np.concatenate([self._history, stuffed])
        self._history = buffer[len(buffer) - (_TAPS - 1) :]
        return _to_pcm16(np.convolve(buffer, _lowpass(), mode="valid"))


class Downsampler:
    """24 kHz -> 8 kHz PCM16, streaming; any chunk length (the phase carries over between calls)."""

    def __init__(self) -> None:
        self._history = np.zeros(_TAPS - 1)
        self._phase = 0  # index within the next chunk of the first sample that is kept

    def process(self, pcm: bytes) -> bytes:
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
        if not len(samples):
            return b""
        buffer = np.concatenate([self._history, samples])
        self._history = buffer[len(buffer) - (_TAPS - 1) :]
        filtered = np.convolve(buffer, _lowpass(), mode="valid")  # one per input sample
        kept = filtered[self._phase :: RATIO]
        self._phase = (self._phase - len(samples)) % RATIO
        return _to_pcm16(kept)

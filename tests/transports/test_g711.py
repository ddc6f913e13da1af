"""transports/g711.py: companding sample for sample against CPython's audioop, and the 3:1 rate change."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from tests.client import tone
from transports import g711

ALL_SAMPLES = np.arange(-32768, 32768, dtype="<i2").tobytes()


def audioop() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop")  # in the standard library up to Python 3.12


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
def test_companding_matches_the_reference_for_every_value(codec: g711.Codec) -> None:
    ref = audioop()
    encode, decode = (ref.lin2ulaw, ref.ulaw2lin) if codec == "pcmu" else (ref.lin2alaw, ref.alaw2lin)
    assert g711.encode(ALL_SAMPLES, codec) == encode(ALL_SAMPLES, 2)
    every_byte = bytes(range(256))
    assert g711.decode(every_byte, codec) == decode(every_byte, 2)


@pytest.mark.parametrize("codec", ["pcmu", "pcma"])
def test_a_round_trip_keeps_speech_band_audio(codec: g711.Codec) -> None:
    pcm = tone(200, 8000, 440)
    back = np.frombuffer(g711.decode(g711.encode(pcm, codec), codec), "<i2").astype(float)
    original = np.frombuffer(pcm, "<i2").astype(float)
    snr_db = 10 * np.log10(np.mean(original**2) / np.mean((original - back) ** 2))
    assert snr_db > 30  # G.711 gives about 38 dB on a loud tone


def test_upsampling_is_the_same_chunked_or_whole_and_close_to_the_ideal() -> None:
    narrow = tone(1000, 8000, 1000)
    whole = g711.Upsampler().process(narrow)
    up = g711.Upsampler()
    chunked = b"".join(up.process(narrow[i : i + 318]) for i in range(0, len(narrow), 318))
    assert whole == chunked
    assert len(whole) == 3 * len(narrow)
    ideal = np.frombuffer(tone(1000, 24000, 1000), "<i2").astype(float)
    got = np.frombuffer(whole, "<i2").astype(float)
    delay = 48  # the filter's: (97 - 1) / 2 samples at 24 kHz
    error = ideal[200:-200] - got[200 + delay : len(got) - 200 + delay]
    assert np.sqrt(np.mean(error**2)) < 5  # of a 6950 rms tone


def test_downsampling_removes_what_8_khz_cannot_carry_and_keeps_the_rest() -> None:
    down = g711.Downsampler()
    wide = tone(1000, 24000, 6000)  # above 4 kHz: must not alias into the narrow band
    out = np.frombuffer(b"".join(down.process(wide[i : i + 962]) for i in range(0, len(wide), 962)), "<i2")
    assert len(out) == 8000
    assert np.abs(out[100:]).max() < 50
    kept = np.frombuffer(g711.Downsampler().process(tone(1000, 24000, 1000)), "<i2").astype(float)
    assert np.sqrt(np.mean(kept[100:] ** 2)) > 6500  # a 1 kHz tone passes

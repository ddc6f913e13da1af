"""``stages/resample.py``: rates convert without shifting pitch or length, chunked equals one-shot."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tests.client import tone

if importlib.util.find_spec("av") is None:
    pytest.skip("resampling needs the 'av' package (pip install av)", allow_module_level=True)

from stages.resample import Resampler, resample

PAIRS = [(48000, 16000), (16000, 22050), (22050, 16000), (24000, 16000), (22050, 48000), (8000, 16000)]


def peak_hz(pcm: bytes, rate_hz: int) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate_hz)[int(np.argmax(spectrum))])


@pytest.mark.parametrize(("from_hz", "to_hz"), PAIRS)
def test_a_tone_keeps_its_frequency_and_length(from_hz: int, to_hz: int) -> None:
    out = resample(tone(1000, from_hz, freq=1000.0), from_hz, to_hz)
    assert abs(len(out) / 2 / to_hz - 1.0) < 0.003  # within 3 ms of one second
    assert abs(peak_hz(out, to_hz) - 1000.0) <= 2.0  # FFT bin is 1 Hz
    level = np.abs(np.frombuffer(out, dtype="<i2")[200:-200]).max()
    assert 0.27 * 32767 < level < 0.33 * 32767  # amplitude 0.3 kept (no clipping, no loss)


@pytest.mark.parametrize(("from_hz", "to_hz"), PAIRS)
@pytest.mark.parametrize("chunk_ms", [10, 20, 37])
def test_chunked_processing_equals_one_shot(from_hz: int, to_hz: int, chunk_ms: int) -> None:
    pcm = tone(500, from_hz, freq=1000.0) + tone(500, from_hz, freq=440.0)
    whole = np.frombuffer(resample(pcm, from_hz, to_hz), dtype="<i2").astype(np.int32)
    resampler = Resampler(from_hz, to_hz)
    step = int(from_hz * chunk_ms / 1000) * 2
    pieces = [resampler.process(pcm[i : i + step]) for i in range(0, len(pcm), step)]
    chunked = np.frombuffer(b"".join(pieces) + resampler.flush(), dtype="<i2").astype(np.int32)
    assert abs(len(chunked) - len(whole)) <= 1
    n = min(len(chunked), len(whole))
    assert np.abs(chunked[:n] - whole[:n]).max() <= 2  # within rounding


def test_same_rate_passes_through_and_empty_input_is_empty() -> None:
    pcm = tone(20, 16000)
    resampler = Resampler(16000, 16000)
    assert resampler.process(pcm) == pcm
    assert resampler.flush() == b""
    assert Resampler(48000, 16000).process(b"") == b""
    assert resample(pcm, 16000, 16000) == pcm


def test_a_20_ms_frame_comes_out_as_about_20_ms() -> None:
    resampler = Resampler(48000, 16000)
    sizes = [len(resampler.process(tone(20, 48000))) // 2 for _ in range(5)]
    assert sizes[0] >= 300  # the filter holds back ~1 ms at the start only
    assert sizes[1:] == [320] * 4

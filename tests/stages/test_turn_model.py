"""``stages/turn_model.py``: Whisper's features as Smart Turn takes them, and the model's verdict on speech."""

from __future__ import annotations

import numpy as np
import pytest

from stages import turn_model
from stages.turn_model import RATE_HZ, WINDOW_S, log_mel
from tests.room import piper_or_skip
from tests.speech import said


def test_features_cover_the_last_8_s_and_pad_shorter_audio_in_front() -> None:
    rng = np.random.default_rng(3)
    long = rng.standard_normal(RATE_HZ * 11).astype(np.float32) * 0.1
    assert log_mel(long).shape == (80, 800)
    assert np.array_equal(log_mel(long), log_mel(long[-RATE_HZ * WINDOW_S :]))
    short = long[: RATE_HZ * 2]
    padded = np.concatenate([np.zeros(RATE_HZ * 6, dtype=np.float32), short])
    assert np.array_equal(log_mel(short), log_mel(padded))


def test_a_tone_lights_its_own_mel_band() -> None:
    t = np.arange(RATE_HZ * 2) / RATE_HZ
    mel = log_mel((0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    loudest = int(np.argmax(mel[:, -150:].mean(axis=1)))
    # Slaney mel: 1 kHz is mel 15, and bin k of 80 spans 0..45.25 mel evenly: k ~ 15 / 45.25 * 81 - 1 = 26
    assert loudest in (25, 26, 27)


@pytest.mark.models
async def test_the_model_hears_a_finished_sentence_and_a_cut_off_one() -> None:
    piper_or_skip()
    model = turn_model.load("smart-turn", print)
    assert model is not None
    pause = bytes(int(0.2 * 22050) * 2)
    finished = await model.finished_prob(said("Tell me a joke.", 22050) + pause, 22050)
    cut_off = await model.finished_prob(said("I was wondering if you could", 22050) + pause, 22050)
    assert finished is not None
    assert cut_off is not None
    assert finished > 0.8, finished
    assert cut_off < 0.2, cut_off
    assert turn_model.load("none", print) is None

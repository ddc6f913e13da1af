"""stages/vad.py on the energy test engine: start after ``start_ms``, pre-roll, end after ``end_ms``, commit, caps."""

from __future__ import annotations

from typing import Any

from stages.engines.testing import EnergyVad
from stages.items import AudioIn, Item, SpeechAudio, TurnDone, UserCommit, VadEvent
from stages.vad import Options, VadStage
from tests.client import silence, tone
from tests.stage_context import stage_context

RATE = 16000


class Collect:
    def __init__(self) -> None:
        self.items: list[Item] = []

    async def emit(self, item: Item) -> None:
        self.items.append(item)

    def events(self) -> list[tuple[str, int]]:
        return [(x.event, x.turn) for x in self.items if isinstance(x, VadEvent)]

    def speech_ms(self) -> float:
        return sum(len(x.pcm) / 2 / RATE * 1000 for x in self.items if isinstance(x, SpeechAudio))


def vad(**options: Any) -> VadStage:
    return VadStage(Options(**options), EnergyVad(EnergyVad.Options(frame_ms=20)), stage_context())


async def feed(stage: VadStage, out: Collect, pcm: bytes, *, at: float = 0.0) -> None:
    for i in range(0, len(pcm), 640):  # 20 ms messages
        await stage.process(AudioIn(pcm[i : i + 640], RATE, at + i / 2 / RATE), out)


async def test_speech_starts_after_start_ms_with_its_pre_roll_and_ends_after_end_ms() -> None:
    stage, out = vad(start_ms=60, end_ms=200, pre_roll_ms=100), Collect()
    await feed(stage, out, silence(200) + tone(500) + silence(300))
    assert out.events() == [("speech_start", 1), ("speech_end", 1)]
    assert isinstance(out.items[-1], TurnDone)
    # 100 ms of pre-roll holds the first 60 ms of voice; then the rest of the voice and 200 ms of silence
    assert out.speech_ms() == 100 + (500 - 60) + 200
    end = next(x for x in out.items if isinstance(x, VadEvent) and x.event == "speech_end")
    assert end.voiced_until == 0.68  # the arrival time of the last voiced frame


async def test_a_click_shorter_than_start_ms_is_not_speech() -> None:
    stage, out = vad(start_ms=60), Collect()
    await feed(stage, out, silence(100) + tone(40) + silence(500))
    assert out.items == []


async def test_short_gaps_do_not_break_the_sustained_run_that_barge_in_reads() -> None:
    stage, out = vad(start_ms=20, end_ms=400, sustain_gap_ms=100), Collect()
    await feed(stage, out, tone(200) + silence(60) + tone(200) + silence(200) + tone(100))
    runs = [x.voiced_ms for x in out.items if isinstance(x, SpeechAudio)]
    assert max(runs) >= 400  # 200 + 200 across a 60 ms gap
    assert runs[-1] == 100  # the 200 ms gap broke the run
    trailing = [x.trailing_silence_ms for x in out.items if isinstance(x, SpeechAudio)]
    assert max(trailing) == 200  # at the end of the 200 ms pause (the ASR decodes speculatively there)
    assert trailing[-1] == 0  # the last piece ends voiced


async def test_commit_ends_the_utterance_now_and_counts_voice_too_short_to_start() -> None:
    stage, out = vad(start_ms=100, end_ms=1000), Collect()
    await feed(stage, out, tone(40))
    await stage.process(UserCommit(1.0), out)
    assert out.events() == [("speech_start", 1), ("speech_end", 1)]
    assert isinstance(out.items[-1], TurnDone)
    empty = Collect()
    await vad().process(UserCommit(1.0), empty)
    assert empty.items == []  # nothing voiced: nothing to commit


async def test_an_utterance_is_cut_at_max_utterance_ms() -> None:
    stage, out = vad(start_ms=20, end_ms=5000, max_utterance_ms=1000), Collect()
    await feed(stage, out, tone(2500))
    assert [e for e, _ in out.events()].count("speech_end") == 2  # cut at 1 s, and again at 2 s
    assert out.events()[0] == ("speech_start", 1)


async def test_other_rates_are_resampled_for_a_detector_that_needs_one() -> None:
    from stages.engines.webrtc_vad import WebrtcVad

    ctx = stage_context(in_rate_hz=24000)
    stage = VadStage(Options(), WebrtcVad(WebrtcVad.Options()), ctx)
    assert stage.rate_hz == 16000
    assert stage.resampler is not None


def vad_in(ctx: Any, **options: Any) -> VadStage:
    return VadStage(Options(**options), EnergyVad(EnergyVad.Options(frame_ms=20)), ctx)


async def test_edges_carry_their_place_on_the_input_clock() -> None:
    stage, out = vad(start_ms=60, end_ms=200, pre_roll_ms=100), Collect()
    await feed(stage, out, silence(200) + tone(500) + silence(300))
    start, end = (x for x in out.items if isinstance(x, VadEvent))
    # voice from 200 ms; speech confirmed at 260 ms; 100 ms of pre-roll before the confirming frame
    assert start.audio_ms == 160
    assert end.audio_ms == 900  # 200 ms of silence after the voice ended at 700 ms


async def test_session_overrides_change_endpointing_and_pre_roll_mid_session() -> None:
    from stages.base import VadOverrides

    ctx = stage_context()
    stage, out = vad_in(ctx, start_ms=60, end_ms=200, pre_roll_ms=100), Collect()
    ctx.vad = VadOverrides(end_ms=600, pre_roll_ms=40)
    await feed(stage, out, tone(300) + silence(400) + tone(300) + silence(700))
    assert out.events() == [("speech_start", 1), ("speech_end", 1)]  # the 400 ms pause no longer ends it
    assert out.speech_ms() == 40 + (300 - 60) + 400 + 300 + 600


async def test_threshold_override_makes_quiet_speech_count_or_not() -> None:
    from stages.base import VadOverrides

    quiet = tone(400, amplitude=0.003)  # about -53 dBFS: under the default -40 dBFS
    ctx = stage_context()
    stage, out = vad_in(ctx, start_ms=60, end_ms=200), Collect()
    await feed(stage, out, quiet + silence(300))
    assert out.events() == []
    ctx.vad = VadOverrides(threshold=0.2)  # -58 dBFS
    await feed(stage, out, quiet + silence(300))
    assert out.events() == [("speech_start", 1), ("speech_end", 1)]


async def test_manual_mode_keeps_every_frame_until_the_commit() -> None:
    from stages.base import VadOverrides

    ctx = stage_context(vad=VadOverrides(manual=True))
    stage, out = vad_in(ctx, start_ms=60, end_ms=200), Collect()
    await feed(stage, out, silence(500) + tone(200) + silence(800))
    assert out.events() == [("speech_start", 1)]  # opened by the first frame, silence or not
    await stage.process(UserCommit(2.0), out)
    assert out.events() == [("speech_start", 1), ("speech_end", 1)]
    assert out.speech_ms() == 1500
    assert isinstance(out.items[-1], TurnDone)


async def test_clear_drops_the_open_utterance_and_reports_it() -> None:
    from stages.items import InputCleared, UserClear

    stage, out = vad(start_ms=60, end_ms=200), Collect()
    await feed(stage, out, tone(300))
    await stage.process(UserClear(1.0), out)
    assert isinstance(out.items[-1], InputCleared)
    assert out.items[-1].turn == 1
    await stage.process(UserCommit(1.1), out)  # nothing left to commit
    assert not any(isinstance(x, TurnDone) for x in out.items)
    idle = Collect()
    await vad().process(UserClear(1.0), idle)
    assert idle.items == []


async def test_a_pause_after_finished_words_ends_the_turn_sooner_than_after_unfinished_ones() -> None:
    """The ASR's hint (turn -> (audio ms its words cover, they sound finished)) picks the silence."""
    for complete, ends_after_ms in ((True, 200), (False, 1000)):
        stage, out = vad(start_ms=20, end_ms=600, end_complete_ms=200, end_incomplete_ms=1000), Collect()
        await feed(stage, out, tone(400) + silence(100))
        assert stage.turn == 1
        stage.ctx.turn_hints[1] = (stage.utterance_ms, complete)  # decoded at the pause, covering all voice
        silence_fed = 100
        while stage.turn is not None:
            await feed(stage, out, silence(20))
            silence_fed += 20
        assert silence_fed == ends_after_ms
        assert 1 not in stage.ctx.turn_hints  # a turn's hint goes with it


async def test_a_hint_that_missed_the_latest_voice_is_not_used() -> None:
    stage, out = vad(start_ms=20, end_ms=600, end_complete_ms=200, end_incomplete_ms=1000), Collect()
    await feed(stage, out, tone(300) + silence(100))
    stage.ctx.turn_hints[1] = (stage.utterance_ms, True)
    await feed(stage, out, tone(200))  # the user went on after the decode: its verdict is stale
    fed = 0
    while stage.turn is not None:
        await feed(stage, out, silence(20))
        fed += 20
    assert fed == 600  # end_ms: no hint covers the last voice

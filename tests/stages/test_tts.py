"""``stages/tts.py`` clause cutting: the first clause of a turn is cut early for a sooner first audio."""

from __future__ import annotations

import pytest

from stages.tts import first_clause, split_clauses


@pytest.mark.parametrize(
    ("buffer", "clause", "rest"),
    [
        ("The sky is blue because of scattering, where", "The sky is blue because of scattering,", "where"),
        ("I am not sure, but", "I am not sure,", "but"),
        ("Hello there. How", "Hello there.", "How"),
        ("Yes, I do", None, "Yes, I do"),  # a comma before min_chars does not cut
        ("It costs 3,", None, "It costs 3,"),  # "3," may become "3,000": wait for what follows
        ("Sure!", None, "Sure!"),
    ],
)
def test_first_clause_ends_at_a_comma_or_sentence_end(buffer: str, clause: str | None, rest: str) -> None:
    assert first_clause(buffer, min_chars=12, max_chars=60) == (clause, rest)


def test_a_long_first_clause_is_cut_at_a_space_before_the_cap() -> None:
    text = "It costs three thousand dollars and some more words beyond the sixty character cap for sure"
    clause, rest = first_clause(text, min_chars=12, max_chars=60)
    assert clause is not None
    assert len(clause) <= 60
    assert text == clause + rest
    assert not rest.startswith(("t ", "s "))  # cut between words, not inside one


def test_short_text_waits_for_more() -> None:
    assert first_clause("The capital of", min_chars=12, max_chars=60) == (None, "The capital of")


def test_later_clauses_still_end_at_sentences_only() -> None:
    clauses, rest = split_clauses("It is blue, mostly. And then", min_chars=12, max_chars=160, final=False)
    assert clauses == ["It is blue, mostly."]
    assert rest == "And then"


async def test_a_text_only_turn_is_not_spoken_and_others_are() -> None:
    from stages.base import ReplyPlan
    from stages.engines.testing import ToneTts
    from stages.items import AudioChunk, Item, ReplyDelta
    from stages.tts import Options, TtsStage
    from tests.stage_context import stage_context

    class Collect:
        def __init__(self) -> None:
            self.items: list[Item] = []

        async def emit(self, item: Item) -> None:
            self.items.append(item)

    ctx = stage_context(reply_plan=lambda turn: ReplyPlan(speak=turn != 1))
    stage = TtsStage(Options(), ToneTts(ToneTts.Options(word_ms=20, gap_ms=0)), ctx)
    out = Collect()
    for turn in (1, 2):
        await stage.process(ReplyDelta(turn, "Hello there, my friend."), out)
        await stage.finish(turn, out)
    assert {x.turn for x in out.items if isinstance(x, AudioChunk)} == {2}

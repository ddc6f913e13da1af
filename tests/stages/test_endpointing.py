"""stages/endpointing.py: whether the words before a pause make a whole utterance."""

from __future__ import annotations

import pytest

from stages.endpointing import sounds_complete


@pytest.mark.parametrize(
    "text",
    [
        "What time is it?",
        "Turn on the lights in the kitchen.",
        "No.",
        "Yes please",
        "Could you please translate this?",
        "I think so.",
        "Book it for next Friday.",
        "How many legs does a spider have?",  # a question closing on its auxiliary
        "Do you know what it does?",
        "Can you help?",  # a request may end on a verb that needs no object
        "What did you set?",  # not a request: a question closes on its verb
        "Can you recommend a good book?",  # "book" the noun, not the verb (voice_to_voice waited 1.2 s on it)
        "Please cancel my order.",
        "Could you tell me what to read?",
        "I read.",
        "",  # no words (a cough): nothing to wait for
    ],
)
def test_finished(text: str) -> None:
    assert sounds_complete(text)


@pytest.mark.parametrize(
    "text",
    [
        "I'd like to book a flight to",
        "I'd like to book a flight to.",  # Whisper puts a full stop on anything
        "Tell me about the",
        "Can you set a timer for",
        "I was thinking that maybe we could",
        "So I was thinking that maybe we could?",  # not a question's opening: the "?" is Whisper's habit
        "Um,",
        "Well, I'm",
        "and then...",
        "The weather in",
        "Could you please translate?",  # the request's object comes after the pause
        "Can you send",
        "Please book.",
        "Could you ask them to send?",
    ],
)
def test_unfinished(text: str) -> None:
    assert not sounds_complete(text)

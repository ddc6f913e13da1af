"""Does what the user said sound finished? The words' half of end-of-turn detection.

The VAD hears a pause; this says whether the words before it make a whole utterance, so the VAD can end
the turn quickly after "What time is it?" and wait after "I'd like to book a flight to". A lexical test,
cheap enough to run on every pause transcript (the ASR's speculative decode): an utterance sounds
unfinished when it ends on a word that needs a continuation (an article, a preposition, a conjunction,
a filler, a hanging auxiliary, unless a question that opened as one closes on it), on a preposition
and a demonstrative (a clipped "about the" heard as "about this"), with no closing mark after more than
a few words (Whisper closes what it heard as a sentence), on a request's verb that needs its object ("Could
you please translate?": Whisper marks the pause before "good morning into Spanish" as a question), or trails
off ("...", "-"). Otherwise it sounds finished.
The audio half is ``stages/turn_model.py`` (Smart Turn v3.2, whose weights now ship inside the
``pipecat-ai`` wheel): with it on, the ASR stage counts words as finished only when the voice sounds
finished too, which catches a misheard last word ("the lights in there." for "the lights in the").
"""

from __future__ import annotations

import re

# Words after which an English utterance is almost never over.
CONTINUES: frozenset[str] = frozenset(
    (
        *("a", "an", "the", "my", "your", "its", "our", "their", "some", "any", "every", "each"),
        *("to", "of", "in", "on", "at", "for", "from", "with", "by", "about", "into", "onto", "under", "near"),
        *("through", "between", "during", "without", "within", "toward", "towards", "than", "as", "like"),
        *("and", "or", "but", "because", "if", "when", "while", "although", "though", "unless", "until"),
        *("whereas", "nor", "um", "uh", "er", "erm", "hmm", "ah", "eh"),
        *("is", "are", "was", "were", "am", "be", "been", "being"),
        *("i'm", "you're", "we're", "they're", "he's", "she's", "it's", "i've", "you've", "we've", "they've"),
        *("i'd", "you'd", "we'd", "they'd", "i'll", "you'll", "we'll", "they'll", "let's", "gonna", "wanna"),
        *("gotta", "i", "we", "they", "he", "she", "which", "who", "whom", "whose", "where", "very", "quite"),
        "just",
    )
)
# Auxiliaries end short answers ("Yes, I can.") but leave longer utterances hanging ("... if you could").
HANGING_AUXILIARIES: frozenset[str] = frozenset(
    (
        *("can", "could", "will", "would", "shall", "should", "may", "might", "must"),
        *("do", "does", "did", "have", "has", "had"),
    )
)
SHORT_ANSWER_WORDS = 3
# Verbs a request cannot end on: what to translate, tell or send comes next ("Could you please translate?",
# "Can you send", "Please book"). Verbs a request may end on ("help", "repeat", "stop", "explain") are not here.
NEEDS_OBJECT: frozenset[str] = frozenset(
    (
        *("translate", "tell", "show", "give", "send", "bring", "book", "buy", "order", "find", "put", "set"),
        *("make", "schedule", "add", "remind", "play", "read", "open", "cancel", "text", "email", "describe"),
        *("recommend", "suggest", "spell", "fetch"),
    )
)
# ... as the verb: right after "you", "please" or "to" ("Can you recommend a good book?" ends on a noun)
VERB_LEADS: frozenset[str] = frozenset(("you", "please", "to"))
REQUEST_OPENERS: frozenset[str] = frozenset(("can", "could", "would", "will"))
QUESTION_OPENERS: frozenset[str] = frozenset(("what", "how", "who", "where", "when", "which", "why", "whose"))
PREPOSITIONS: frozenset[str] = frozenset(("about", "in", "on", "at", "for", "with", "to", "of", "from", "by", "near"))
DEMONSTRATIVES: frozenset[str] = frozenset(("this", "that"))
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_TRAILING_OFF = re.compile(r"(\.\.\.|…|-|—|,)\s*$")


def last_words(text: str, n: int = 2) -> list[str]:
    return _WORD.findall(text.lower())[-n:]


def _requests(words: list[str]) -> bool:
    """A request: "please" in it, or opening "can / could / would / will you"."""
    return "please" in words or (len(words) >= 2 and words[0] in REQUEST_OPENERS and words[1] == "you")


def _verb_of_request(words: list[str]) -> bool:
    """The last word is the request's verb: right after "you", "please" or "to", but not a question's
    "what to read" (and not the noun of "a good book")."""
    lead = words[-2] if len(words) >= 2 else ""
    return lead in VERB_LEADS and not (lead == "to" and len(words) >= 3 and words[-3] in QUESTION_OPENERS)


def sounds_complete(text: str) -> bool:
    """True when ``text`` (a transcript so far) reads as a whole utterance; no words (a cough) count as one."""
    stripped = text.strip()
    if not stripped:
        return True
    if _TRAILING_OFF.search(stripped):
        return False
    words = _WORD.findall(stripped.lower())
    if not words:
        return True
    last = words[-1]
    if last in CONTINUES:
        return False  # "a timer for?": Whisper puts a question mark on the unfinished question too
    if last in HANGING_AUXILIARIES:
        # "How many legs does a spider have?": a question that opens as one may close on its auxiliary
        asks = stripped.endswith("?") and (words[0] in QUESTION_OPENERS or words[0] in HANGING_AUXILIARIES)
        return asks or len(words) <= SHORT_ANSWER_WORDS
    if last in NEEDS_OBJECT and _requests(words) and _verb_of_request(words):
        return False  # "Could you please translate?": Whisper closes the pause before the object
    if len(words) >= 2 and words[-2] in PREPOSITIONS and last in DEMONSTRATIVES:
        return False  # "about this", "in that": most often a clipped "about the", "in the"
    # Whisper ends what it heard as a sentence with a mark; a cut-off clause often has none
    return stripped[-1] in ".!?" or len(words) <= SHORT_ANSWER_WORDS

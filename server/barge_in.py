"""Voice over the agent: pause first, let the words decide.

``words`` (the default): when the user's voice starts while the agent is answering, the agent's audio is
held at once (``agent_paused``) and the user's turn is decoded early (``StageContext.urgent_turns``).
Real words interrupt the agent as before (history cut to what was played). A backchannel ("yeah",
"uh-huh": ``backchannels``), or no words at all (a cough, a laugh, noise), lets it go on where it paused
(``agent_resumed``), with nothing cut; that user turn ends there and is not answered. The words should
decide within ``window_ms`` of the voice: if none were decoded by then and the voice goes on, it is an
interruption; and still talking ``max_pause_ms`` after the pause began is one, whatever the words. Quiet
by then with no words decided (a client that stopped its mic mid-utterance sends no silence to end it),
the agent goes on, and that turn's final transcript is judged as if the pause still held.
``immediate``: voice sustained for ``barge_in_min_ms`` interrupts at once, no pause.

Tiny Whisper reads words into sounds that have none (a hum as "in a month", a laugh as "Aha"): words it
was unsure of (mean token log-probability under ``UNSURE_LOGPROB``) decide nothing either; a later,
surer partial can still cut, and so can voice that goes on for ``max_pause_ms``.

Clients that play the agent through speakers with no echo cancellation (``echo_words``): what is left
of the agent's echo after the server's canceller (a reverberant room leaves 8-19 dB of it: the linear
filter of AEC3 is ~50 ms long) is heard as the agent's own words. Words that are mostly among the ones
the agent just said are its echo, not the user's: they decide nothing, like a cough. Their echo outlasts the
agent's turn: its last ``lead_ms`` play after ``turn_end``, and the room rings on. A voice that starts then
(``ECHO_TAIL_MS`` after the agent's audio stopped playing) is judged the same way once its words are in:
what is not real words ends that turn unanswered (else the agent answers its own echo). And the echo
that is left opens voice after voice over the agent: each pause, found false, resumes into more echo (the
agent stutters). After ``MAX_FALSE_PAUSES`` false pauses in one agent turn, voice over it pauses it only
once it has lasted ``window_ms`` (a person who goes on talking), and words decide from its start as ever.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from stages.items import SpeechAudio, Transcription
from transports import messages as m
from vocab.metrics import METRICS

if TYPE_CHECKING:
    from server.session import Session

BARGE_INS_TOTAL = METRICS.counter("voxpipe_barge_ins_total", "Voice over the agent, by what the words decided")
_NON_SPEECH = re.compile(r"[\[(*][^\])*]*[\])*]")  # "(coughs)", "[laughter]", "*sigh*": not words
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
Verdict = Literal["words", "backchannel", "nothing"]
# A partial this soon after the voice began decoded mostly the pre-roll and a breath of voice: Whisper
# hears "Bye." or "I" in it (bench/turn_taking.py: 5 of 6 false interruptions, all first partials, ~100 ms
# in). Its words do not cut the agent; a later partial's or the final's do (real words then cut ~300 ms in).
EARLY_PARTIAL_MS = 200.0
# Echo: this share of the heard words is among the agent's last ``ECHO_RECENT_WORDS`` released words
ECHO_WORDS_SHARE = 0.6
ECHO_RECENT_WORDS = 30
# Whisper's mean token log-probability below which its words are taken as a misreading of a sound: its own
# threshold for a failed decode (faster-whisper's log_prob_threshold). Measured on Piper's voice: real
# interruptions' finals -0.08 to -0.31, their partials after the first -0.2 to -1.03 (the next one then
# sure); misread hums -0.56 to -1.65 ("in a month.", "and I'm"). At -0.8 "Actually" (-0.96) waited a partial.
UNSURE_LOGPROB = -1.0
# With no echo cancellation at the client, what is left of the agent's echo is read as garbled words near
# -0.8..-1.0 (bench/turn_taking.py --only echo, RT60 600 ms: 12 of 20 echo decisions); a person's words are
# surer: a stricter bar costs them a partial at most.
UNSURE_LOGPROB_ECHO = -0.8
# A voice this soon after the agent's audio stopped playing at the client may be its echo: the acoustic
# path (40-80 ms), the room's reverberation (RT60 300-600 ms: the residual's loud part) and the VAD's onset
ECHO_TAIL_MS = 600.0
# False pauses of one agent turn (no real words came) after which, for clients with no echo cancellation,
# voice over it pauses the agent only once it lasts ``window_ms`` (bench/turn_taking.py --only echo: RT60
# 600 ms made 66 pauses in 20 short lines, each resuming into its own echo)
MAX_FALSE_PAUSES = 2
VOICE_GONE_MS = 100.0  # silence after which the voice over the agent counts as stopped
AUDIO_STALLED_MS = 250.0  # no audio at all for this long (a mic stopped mid-utterance): no voice either


_VOWEL = re.compile(r"[aeiouy]")
# "ha ha", "hahaha", "heh", "hehe", "aha": a laugh, not words
_LAUGH = re.compile(r"(?:h[aeio]){2,}h?|hah?|heh|a+ha+h?")


def words_of(text: str) -> list[str]:
    return _WORD.findall(_NON_SPEECH.sub(" ", text.lower()).replace("-", " "))


def is_hum(word: str) -> bool:
    """ "mmm", "hmm", "mhm", "shh", and what tiny Whisper makes of a hum ("nmr", "mmo"): no vowel, or the
    "mm" no English word starts with; or a laugh ("ha", "aha", "hehe"). Not words."""
    return _VOWEL.search(word) is None or word.startswith("mm") or _LAUGH.fullmatch(word) is not None


def is_echo(heard: list[str], agent_words: list[str]) -> bool:
    """Whether ``heard`` is mostly the agent's own recent words (a clipped word counts by its first 4 letters)."""
    if not heard or not agent_words:
        return False
    pool = set(agent_words)
    stems = {w[:4] for w in agent_words if len(w) >= 4}
    hits = sum(w in pool or (len(w) >= 4 and w[:4] in stems) for w in heard)
    return hits >= ECHO_WORDS_SHARE * len(heard)


def verdict(text: str, backchannels: frozenset[tuple[str, ...]]) -> Verdict:
    """What a transcript means for the floor: real words, a backchannel, or nothing said."""
    words = words_of(text)
    if not words:
        return "nothing"
    i = 0
    while i < len(words):  # the whole transcript must be made of backchannel phrases ("yeah yeah okay")
        if is_hum(words[i]):
            i += 1
            continue
        for size in (3, 2, 1):
            if tuple(words[i : i + size]) in backchannels:
                i += size
                break
        else:
            return "words"
    return "backchannel"


def _talking(pause: _Pause, now: float) -> bool:
    """Voice now: not ended by the VAD, no trailing silence, and audio still arriving."""
    recent = (now - pause.audio_at) * 1000.0 < AUDIO_STALLED_MS
    return not pause.voice_ended and pause.silent_ms < VOICE_GONE_MS and recent


@dataclass(slots=True)
class _Pause:
    user_turn: int
    agent_turns: list[int]
    timers: list[asyncio.TimerHandle]
    heard: Verdict | None = None  # the last transcript's verdict, so far
    voice_ended: bool = False
    silent_ms: float = 0.0  # trailing silence of the user's latest audio
    audio_at: float = 0.0  # session clock when the user's latest audio arrived
    started_at: float = 0.0  # session clock when the pause began
    held: bool = True  # the agent's audio is held (else words decide while it goes on, until ``window_ms``)


class BargeIn:
    """One session's barge-in policy. Not thread-safe: every call runs on the session's loop."""

    def __init__(
        self,
        session: Session,
        *,
        mode: Literal["immediate", "words"],
        backchannels: list[str],
        window_ms: float,
        max_pause_ms: float,
        min_voiced_ms: float,
        echo_words: bool = False,
    ) -> None:
        self.session = session
        self.echo_words = echo_words  # the client plays the agent aloud with no echo cancellation
        self.unsure_logprob = UNSURE_LOGPROB_ECHO if echo_words else UNSURE_LOGPROB
        self.mode = mode
        self.backchannels = frozenset(tuple(words_of(b)) for b in backchannels if words_of(b))
        self.window_ms = window_ms
        self.max_pause_ms = max_pause_ms
        self.min_voiced_ms = min_voiced_ms
        self.pause: _Pause | None = None
        # user turns over the agent whose final words decide, with no pause held (the agent resumed before
        # they came, or its turn was over: its echo's tail) -> the agent turns their echo would be of
        self.watches: dict[int, list[int]] = {}
        self.false_pauses: dict[int, int] = {}  # agent turn -> pauses that found no real words

    @property
    def watching(self) -> bool:
        """Whether transcripts matter to the floor now (hot path: a cheap check)."""
        return self.pause is not None or bool(self.watches)

    # ------------------------------------------------------------ what the stages say

    def speech_started(self, user_turn: int) -> None:
        """The VAD opened ``user_turn``: over the agent, in ``words`` mode, hold the agent's audio."""
        if self.mode != "words" or self.pause is not None:
            return
        agents = [t.id for t in self.session.turns.responding(before=user_turn)]
        now = self.session.clock()
        if not agents:
            tail = self._echo_tail()
            if tail:  # the agent's audio is over, its echo may not be: the words will tell
                self.watches[user_turn] = tail
            return
        self.session.ctx.urgent_turns.add(user_turn)
        pause = self.pause = _Pause(user_turn, agents, [], audio_at=now, started_at=now, held=False)
        if self.echo_words and max(self.false_pauses.get(t, 0) for t in agents) >= MAX_FALSE_PAUSES:
            # most likely its echo again: the agent goes on unless the voice does
            pause.timers = [asyncio.get_running_loop().call_later(self.window_ms / 1000.0, self._hold, user_turn, True)]
        else:
            self._hold(user_turn)

    def _hold(self, user_turn: int, delayed: bool = False) -> None:
        """Hold the agent's audio for the voice of ``user_turn``: at once, or (``delayed``) if it went on."""
        pause = self.pause
        if pause is None or pause.user_turn != user_turn or pause.held:
            return
        session = self.session
        now = session.clock()
        if delayed and not _talking(pause, now):
            return  # the voice stopped before the window: its words decide, the agent never paused
        session.playhead.pause(now)
        for turn in pause.agent_turns:
            session.outbox.control(m.AgentPaused(turn=turn))
        loop = asyncio.get_running_loop()
        pause.timers = [
            loop.call_later(self.window_ms / 1000.0, self._window_over, user_turn),
            loop.call_later(self.max_pause_ms / 1000.0, self._too_long, user_turn),
        ]
        pause.held = True

    def speech_ended(self, user_turn: int) -> None:
        if self.pause is not None and self.pause.user_turn == user_turn:
            self.pause.voice_ended = True

    def speech(self, item: SpeechAudio) -> None:
        """Voice of a user turn (``immediate`` mode: sustained voice over the agent cuts it)."""
        pause = self.pause
        if pause is not None and item.turn == pause.user_turn:
            pause.silent_ms = item.trailing_silence_ms
            pause.audio_at = self.session.clock()
        sustained = self.mode == "immediate" and item.voiced_ms >= self.min_voiced_ms
        if sustained and self.session.turns.responding(before=item.turn):
            self.session.interrupt("barge_in", before_turn=item.turn)

    def transcript(self, item: Transcription) -> bool:
        """Words of the paused-over turn decide. True: the turn was a backchannel and is over (drop it)."""
        pause = self.pause
        if pause is None or item.turn != pause.user_turn:
            return item.turn in self.watches and self._watched(item)
        heard = self._verdict(item.text, pause.agent_turns, item.logprob)
        early = not item.final and self._early(pause.started_at)
        if heard == "words" and early:
            pause.heard = pause.heard or "nothing"  # decoding has begun; the next words decide
            return False
        if heard == "words":
            self._interrupt()
            return False
        pause.heard = heard
        if not item.final:
            return False  # a "yeah" so far: wait for the end of the utterance
        self._resume(heard)
        return True

    def _watched(self, item: Transcription) -> bool:
        """The final words of a watched user turn: anything but real words ends it (True: drop it); real
        words are a turn of their own."""
        if not item.final:
            return False
        heard = self._verdict(item.text, self.watches.pop(item.turn), item.logprob)
        if heard != "words":
            BARGE_INS_TOTAL.inc(verdict=heard)
        return heard != "words"

    def _early(self, started_at: float) -> bool:
        return (self.session.clock() - started_at) * 1000.0 < EARLY_PARTIAL_MS

    def turn_gone(self, turn: int) -> None:
        """A turn ended (or was cut): a pause it held or was held for is over."""
        self.false_pauses.pop(turn, None)
        self.watches.pop(turn, None)
        pause = self.pause
        if pause is not None and (turn == pause.user_turn or turn in pause.agent_turns):
            if turn == pause.user_turn:
                self._resume(pause.heard or "nothing")
            elif self._clear() is not None and not pause.held:
                # the agent finished under a voice it did not pause for: that voice's words decide still
                self.watches[pause.user_turn] = pause.agent_turns

    def _verdict(self, text: str, agent_turns: list[int], logprob: float | None) -> Verdict:
        heard = verdict(text, self.backchannels)
        if heard != "words":
            return heard
        if logprob is not None and logprob < self.unsure_logprob:
            BARGE_INS_TOTAL.inc(verdict="unsure_words")
            return "nothing"
        if self.echo_words and is_echo(words_of(text), self._agent_words(agent_turns)):
            BARGE_INS_TOTAL.inc(verdict="echo_words")
            return "nothing"
        return heard

    def _echo_tail(self) -> list[int]:
        """Ended agent turns whose echo may still reach the mic now (clients with no echo cancellation)."""
        if not self.echo_words:
            return []
        playhead = self.session.playhead
        audible_until = playhead.playing_until + playhead.client_delay_s + ECHO_TAIL_MS / 1000.0
        if self.session.clock() > audible_until:
            return []
        return [turn for turn, line in playhead.timelines.items() if line.ended and line.released_ms > 0][-2:]

    def _agent_words(self, agent_turns: list[int]) -> list[str]:
        """The last words of what the paused agent turns have sent out (their echo can only be of those)."""
        out: list[str] = []
        for turn in agent_turns:
            timeline = self.session.playhead.timeline(turn)
            if timeline is not None:
                for start_ms, text, _ms in timeline.segments:
                    if start_ms <= timeline.released_ms:
                        out += words_of(text)
        return out[-ECHO_RECENT_WORDS:]

    # ------------------------------------------------------------ decisions

    def _window_over(self, user_turn: int) -> None:
        """No words decoded yet and the voice goes on: someone is talking; let them have the floor."""
        pause = self.pause
        if pause is None or pause.user_turn != user_turn or pause.heard is not None:
            return
        if _talking(pause, self.session.clock()):
            BARGE_INS_TOTAL.inc(verdict="undecided_voice")
            self._interrupt(counted=True)

    def _too_long(self, user_turn: int) -> None:
        """``max_pause_ms`` after the pause: still talking is a person, whatever Whisper made of them."""
        pause = self.pause
        if pause is None or pause.user_turn != user_turn:
            return
        if _talking(pause, self.session.clock()):
            BARGE_INS_TOTAL.inc(verdict="long_voice")
            self._interrupt(counted=True)
        elif not pause.voice_ended:  # quiet, yet the utterance is open (no audio since): the agent goes on
            self._resume(pause.heard or "nothing")
            self.watches[user_turn] = pause.agent_turns

    def _interrupt(self, *, counted: bool = False) -> None:
        pause = self._clear()
        if pause is None:
            return
        if not counted:
            BARGE_INS_TOTAL.inc(verdict="words")
        self.session.interrupt("barge_in", before_turn=pause.user_turn)

    def _resume(self, heard: Verdict) -> None:
        pause = self._clear()
        if pause is None:
            return
        BARGE_INS_TOTAL.inc(verdict=heard)
        if not pause.held:
            return  # the agent never stopped
        session = self.session
        for turn in pause.agent_turns:
            self.false_pauses[turn] = self.false_pauses.get(turn, 0) + 1
        session.playhead.resume(session.clock())
        for turn in pause.agent_turns:
            if turn in session.turns.live:
                session.outbox.control(m.AgentResumed(turn=turn))

    def _clear(self) -> _Pause | None:
        pause, self.pause = self.pause, None
        if pause is not None:
            for timer in pause.timers:
                timer.cancel()
            self.session.ctx.urgent_turns.discard(pause.user_turn)
        return pause

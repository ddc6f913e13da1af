"""The session's one playout clock: agent audio waits here, leaves paced, and the timeline says what played when.

Two consumers pull from it, never both at once (aiortc's pull model):
- the WebSocket writer (``due_in`` / ``release``): whole chunks, up to ``lead_ms`` ahead of real-time
  playback, so an interruption has little already in flight;
- while a WebRTC call is up, the call's audio track (``frame_due_at`` / ``pull_frame``): 20 ms frames on
  a frame clock, no lead (the track is the real-time consumer).
What has been played by when (``played_ms``, ``spoken_text``), the client's playout delay learned from
``played`` acks, and the echo guard's reference (``listen``) all come from this one timeline.
Pure logic with an injected clock: every method takes ``now``; the async waiting is the callers'.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stages.inbox import Inbox
from stages.items import AudioChunk

# A release up to this late keeps the clock where it was (client jitter buffers absorb it); later than
# this, the client ran dry and playback restarts from now.
CLOCK_SLACK_S = 0.010
# A frame clock that fell this far behind (a stalled loop) restarts instead of sending a burst.
MAX_FRAME_LATE_S = 0.5
KEEP_ENDED_TURNS = 8  # timelines of ended turns kept for late ``played`` acks
_END = object()  # queue marker: the turn's last stage is done


@dataclass(slots=True)
class TurnAudio:
    """One turn's audio on the timeline."""

    turn: int
    seq: int = 0  # chunks released (``audio.seq`` of the next one)
    released_ms: float = 0.0
    first_released_at: float | None = None
    starts_at: float | None = None  # predicted playout time of its first sample
    # (start_ms, clause text, clause ms or 0 when unknown) per spoken clause
    segments: list[tuple[float, str, float]] = field(default_factory=list)
    ack_ms: float | None = None
    ended: bool = False
    paused_s: float = 0.0  # time the agent was paused after this turn's audio began (not played)

    def played_ms(self, now: float, paused_at: float | None = None) -> float:
        """Client acks when it sent any, else the real time since the first chunk left, pauses aside."""
        if self.ack_ms is not None:
            return min(self.ack_ms, self.released_ms)
        if self.first_released_at is None:
            return 0.0
        until = now if paused_at is None else min(now, paused_at)
        return min(self.released_ms, max(0.0, (until - self.first_released_at - self.paused_s) * 1000.0))

    def spoken_text(self, played_ms: float) -> str:
        """What the user actually heard: whole clauses, plus the played share of the current one.

        A clause's length is known once the next one starts or when it arrived whole (``text_ms``);
        otherwise it is estimated from the speaking rate so far (or 65 ms per character).
        """
        words: list[str] = []
        done_ms = done_chars = 0.0
        for i, (start_ms, text, text_ms) in enumerate(self.segments):
            if played_ms <= start_ms:
                break
            if i + 1 < len(self.segments):
                length_ms = self.segments[i + 1][0] - start_ms
            elif text_ms > 0:
                length_ms = text_ms
            else:
                ms_per_char = done_ms / done_chars if done_chars else 65.0
                length_ms = max(self.released_ms - start_ms, len(text) * ms_per_char)
            clause = text.split()
            if played_ms >= start_ms + length_ms:
                words += clause
                done_ms, done_chars = done_ms + length_ms, done_chars + len(text)
            else:
                share = (played_ms - start_ms) / max(length_ms, 1e-6)
                words += clause[: int(len(clause) * share)]
        return " ".join(words)


@dataclass(frozen=True, slots=True)
class Released:
    """Audio that left the playhead: ``play_at`` is the predicted playout time of its first sample."""

    stage: str
    turn: int
    seq: int
    pcm: bytes
    play_at: float


OnRelease = Callable[[Released], None]
OnCut = Callable[[float], None]
OnResume = Callable[[float, float], None]  # (paused_at, gap_s): what was queued at the client plays gap_s later
OnPause = Callable[[float], None]  # (paused_at): the client holds what it has queued from then on
# Pause and resume listeners hear of them when the client is told (``told_paused`` / ``told_resumed``, after the
# writer sent ``agent_paused`` / ``agent_resumed``), not when decided: the client holds and plays on when the
# message reaches it. Decision times put the held audio ``agent_paused``'s wait in the writer (0.2-1.5 ms,
# against 0.3 ms for ``agent_resumed``) early at every resume, and the echo canceller's reference drifted
# from the echo resume by resume (bench/turn_taking.py --only echo, RT60 600 ms). A WebRTC track holds at once.


class Playhead:
    """Not thread-safe: every method runs on the session's event loop."""

    def __init__(
        self,
        *,
        rate_hz: int,
        lead_ms: float,
        max_chunks: int,
        is_live: Callable[[int], bool],
        frame_ms: int = 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate_hz = rate_hz
        self.lead_s = lead_ms / 1000.0
        self.frame_ms = frame_ms
        self.frame_bytes = rate_hz * frame_ms // 1000 * 2
        self.clock = clock
        self._is_live = is_live
        self._queue: Inbox[tuple[str, int, Any]] = Inbox(max_chunks)  # (stage, turn, AudioChunk | _END)
        self._offset = 0  # bytes of the head chunk the track already pulled
        self.timelines: dict[int, TurnAudio] = {}
        self.playing_until = 0.0  # when all audio released so far has played out
        self.track_attached = False  # a WebRTC track pulls instead of the WebSocket writer
        self.paused_at: float | None = None  # the agent holds its audio (voice over it, words undecided)
        self.ended: list[int] = []  # turns whose end marker was reached: the writer finishes them, oldest first
        self.wake: Callable[[], None] = lambda: None  # the writer's wake-up (audio queued, a turn ended)
        self._on_release: list[OnRelease] = []
        self._on_cut: list[OnCut] = []
        self._on_resume: list[OnResume] = []
        self._on_pause: list[OnPause] = []
        self._told_pause_at: float | None = None  # when the client was told of the pause now held
        # decided, the client not told yet (the writer sends the messages in order): ("pause", 0) or ("resume",
        # the pause decision to decision). A resume withdraws an untold pause, so at most a resume and the
        # next pause wait: maxlen 2 holds them all.
        self._untold: deque[tuple[str, float]] = deque(maxlen=2)
        self._ack_offsets: list[float] = []  # the last few: s the client plays later than predicted
        self.client_delay_s = 0.0
        self._frame_clock: float | None = None  # monotonic time of frame 0 of the track's clock
        self._frames = 0

    def listen(
        self,
        *,
        on_release: OnRelease,
        on_cut: OnCut,
        on_resume: OnResume | None = None,
        on_pause: OnPause | None = None,
    ) -> None:
        """Follow the timeline (the echo guard's reference): every release, every cut, every pause and resume."""
        self._on_release.append(on_release)
        self._on_cut.append(on_cut)
        if on_resume is not None:
            self._on_resume.append(on_resume)
        if on_pause is not None:
            self._on_pause.append(on_pause)

    # ------------------------------------------------------------ producers (the last stage)

    def room(self) -> int:
        return self._queue.room()

    def queued(self) -> int:
        """Chunks and end markers waiting (bounded by ``max_chunks``)."""
        return self._queue.qsize()

    async def put(self, stage: str, chunk: AudioChunk) -> None:
        """Queue a chunk; waits while the queue is full (a slow client blocks the TTS, never grows memory)."""
        entry = (stage, chunk.turn, chunk)
        if not self._queue.try_put(entry):
            await self._queue.put(entry)
        self.wake()

    async def put_end(self, turn: int) -> None:
        """``turn`` has no more audio: it ends once everything queued before this has left."""
        await self._queue.put(("", turn, _END))
        self.wake()

    # ------------------------------------------------------------ the WebSocket writer

    def due_in(self, now: float) -> float | None:
        """Seconds until the head of the queue may leave (0: now); None when the writer has nothing to do."""
        if self.track_attached or self.paused_at is not None:
            return None
        self._skip_dead()
        if self._queue.empty():
            return None
        _stage, _turn, item = self._queue.peek()
        if item is _END:
            return 0.0
        duration_s = (len(item.pcm) - self._offset) / 2 / self.rate_hz
        ahead_s = self.playing_until - now
        if ahead_s > 0 and ahead_s + duration_s > self.lead_s:
            # until the chunk fits in the lead, or the client's buffer runs dry (lead < one chunk)
            return min(ahead_s, ahead_s + duration_s - self.lead_s)
        return 0.0

    def release(self, now: float) -> Released | None:
        """Take the head chunk for the writer (call when ``due_in`` said 0); None for an end marker."""
        self._skip_dead()
        if self._queue.empty():
            return None
        stage, turn, item = self._queue.get_nowait()
        if item is _END:
            self._end(turn)
            return None
        pcm = item.pcm[self._offset :] if self._offset else item.pcm
        text = item.text if not self._offset else None
        self._offset = 0
        late_s = now - self.playing_until
        # The clock runs on through a release that is a little late (a timer's wake-up, a busy loop):
        # restarting it from ``now`` each time made it drift behind real time chunk by chunk.
        play_at = now if late_s > CLOCK_SLACK_S else self.playing_until
        return self._record(stage, turn, pcm, text, item.text_ms, play_at, now)

    # ------------------------------------------------------------ the WebRTC track

    def frame_due_at(self, now: float) -> float:
        """When the track's next frame is due on the frame clock (restarted after a long stall)."""
        frame_s = self.frame_ms / 1000.0
        if self._frame_clock is None or now - (self._frame_clock + self._frames * frame_s) > MAX_FRAME_LATE_S:
            self._frame_clock = now - self._frames * frame_s
        return self._frame_clock + self._frames * frame_s

    def pull_frame(self, now: float) -> bytes:
        """The track's next frame (PCM16, ``frame_ms``), zero-padded; silence when nothing is queued."""
        play_at = self.frame_due_at(now)  # the frame's place on the frame clock: contiguous frame to frame
        self._frames += 1
        parts: list[bytes] = []
        need = self.frame_bytes if self.paused_at is None else 0  # paused: silence, the clock runs on
        while need:
            self._skip_dead()
            if self._queue.empty():
                break
            stage, turn, item = self._queue.peek()
            if item is _END:
                self._queue.get_nowait()
                self._end(turn)
                continue
            piece = item.pcm[self._offset : self._offset + need]
            text = item.text if self._offset == 0 else None
            self._offset += len(piece)
            if self._offset >= len(item.pcm):
                self._queue.get_nowait()
                self._offset = 0
            self._record(stage, turn, piece, text, item.text_ms, play_at, now)
            play_at += len(piece) / 2 / self.rate_hz
            parts.append(piece)
            need -= len(piece)
        if need:
            parts.append(bytes(need))
        return b"".join(parts)

    def pause(self, now: float) -> None:
        """Hold the agent's audio: nothing more leaves (the track plays silence) until ``resume``."""
        if self.paused_at is None:
            self.paused_at = now
            self._untold.append(("pause", 0.0))
            if self.track_attached:
                self.told_paused(now)

    def resume(self, now: float) -> None:
        """Go on where the audio paused; the pause is not counted as played."""
        if self.paused_at is None:
            return
        paused_at = self.paused_at
        gap_s = max(0.0, now - paused_at)
        self.paused_at = None
        self._held_for(gap_s)
        if self._untold and self._untold[-1][0] == "pause":
            self._untold.pop()  # never told: the client never held anything
        else:
            self._untold.append(("resume", gap_s))
            if self.track_attached:
                self.told_resumed(now)
        self.wake()

    def told_paused(self, now: float) -> None:
        """``agent_paused`` has left for the client at ``now`` (the first of a pause's): it holds from then on."""
        if not self._untold or self._untold[0][0] != "pause":
            return  # told already (a second agent turn's message), or withdrawn
        self._untold.popleft()
        self._told_pause_at = now
        for paused in self._on_pause:
            paused(now)

    def told_resumed(self, now: float) -> None:
        """``agent_resumed`` has left at ``now``: what the client held plays on from then on."""
        if not self._untold or self._untold[0][0] != "resume":
            return  # told already (a second agent turn's message), or withdrawn
        _kind, decided_gap_s = self._untold.popleft()
        told_at, self._told_pause_at = self._told_pause_at, None
        if told_at is None:
            return
        gap_s = max(0.0, now - told_at)
        # the client's pause was this long, not the decisions' (the writer sends control before any audio,
        # so nothing was released on the decided clock yet): what follows the held audio follows it at once
        self._held_for(gap_s - decided_gap_s)
        for resumed in self._on_resume:
            resumed(told_at, gap_s)

    def _held_for(self, gap_s: float) -> None:
        """The client held its audio ``gap_s`` (more): the pause is not played, its buffer still has to play."""
        for line in self.timelines.values():
            if not line.ended and line.first_released_at is not None:
                line.paused_s += gap_s
        self.playing_until += gap_s

    def attach_track(self, attached: bool) -> None:
        """A call's track pulls the audio from now on (True), or the WebSocket writer again (False)."""
        self.track_attached = attached
        self._frame_clock = None
        self.wake()

    # ------------------------------------------------------------ the timeline

    def timeline(self, turn: int) -> TurnAudio | None:
        return self.timelines.get(turn)

    def played_ms(self, turn: int, now: float) -> float:
        line = self.timelines.get(turn)
        return 0.0 if line is None else line.played_ms(now, self.paused_at)

    def ack(self, turn: int, ms: float, now: float) -> None:
        """Client ack: ``ms`` of ``turn`` have played by ``now``; learn how much later than predicted it plays."""
        line = self.timelines.get(turn)
        if line is None:
            return
        line.ack_ms = max(line.ack_ms or 0.0, ms)
        if line.starts_at is not None and self.paused_at is None:
            # predicted: the turn's start, plus what played, plus the pauses the client held it for (an ack
            # during a pause, whose length is not known yet, would read as a late client)
            predicted = line.starts_at + line.paused_s + ms / 1000.0
            self._ack_offsets = [*self._ack_offsets[-4:], now - predicted]
            # The smallest recent offset is the tightest (acks only ever arrive late); only a few recent
            # ones count, as an underrun at the client shifts its playout for good.
            self.client_delay_s = min(max(0.0, min(self._ack_offsets)), 1.0)

    def drop_turn(self, turn: int, now: float) -> None:
        """Barge-in: nothing queued of ``turn`` leaves; the client flushes its buffer, and so does the clock."""
        if not self._queue.empty() and self._queue.peek()[1] == turn:
            self._offset = 0
        self._queue.purge(lambda entry: entry[1] == turn)
        self.playing_until = now
        self.paused_at = None  # a pause ends with the turn it held
        self._told_pause_at = None
        self._untold.clear()
        self._finish_timeline(turn)
        for cut in self._on_cut:
            cut(now)
        self.wake()

    def first_released_at(self, turn: int) -> float | None:
        line = self.timelines.get(turn)
        return None if line is None else line.first_released_at

    # ------------------------------------------------------------ internals

    def _skip_dead(self) -> None:
        """The last gate: a chunk of a turn that is over never leaves, whoever pulls."""
        while not self._queue.empty() and not self._is_live(self._queue.peek()[1]):
            self._queue.get_nowait()
            self._offset = 0

    def _record(
        self, stage: str, turn: int, pcm: bytes, text: str | None, text_ms: float, play_at: float, now: float
    ) -> Released:
        line = self.timelines.get(turn)
        if line is None:
            line = self.timelines[turn] = TurnAudio(turn)
        if line.first_released_at is None:
            line.first_released_at = now
            line.starts_at = play_at
        if text:
            line.segments.append((line.released_ms, text, text_ms))
        duration_ms = len(pcm) * 500.0 / self.rate_hz
        line.released_ms += duration_ms
        released = Released(stage=stage, turn=turn, seq=line.seq, pcm=pcm, play_at=play_at)
        line.seq += 1
        self.playing_until = play_at + duration_ms / 1000.0
        for listener in self._on_release:
            listener(released)
        return released

    def _end(self, turn: int) -> None:
        self.ended.append(turn)
        self._finish_timeline(turn)
        self.wake()

    def _finish_timeline(self, turn: int) -> None:
        line = self.timelines.get(turn)
        if line is not None:
            line.ended = True
        ended = [t for t, line in self.timelines.items() if line.ended]
        for old in ended[:-KEEP_ENDED_TURNS]:
            del self.timelines[old]

"""A real echo canceller for clients without one (``audio_in.aec: false``): WebRTC's AEC3.

WebRTC's audio processing module (echo cancellation with its residual echo suppressor, a high-pass
filter, optional noise suppression), through the maintained prebuilt bindings of the ``livekit``
package (``AudioProcessingModule``, 10 ms frames). The far end is the agent's audio as the session's
playhead released it, laid on the playout timeline; each 10 ms of mic audio is processed right after
the reference for the same moment (AEC3 finds the room's delay itself: the echo comes after its reference).
The reference is read only ``lead_ms`` (10) ahead of the mic: audio that starts playing now (a line's
first chunk, the held audio at ``agent_resumed``) is laid at ``now``, and a reference read 40 ms ahead
had already taken those places as silence, so the first 20-40 ms of every line and every resume
reached the mic with no reference, unremoved, and paused the agent again. Runs before the echo guard,
which stays as a second gate on what is left.

The residual gate: AEC3's linear filter covers ~50 ms of echo path, so a reverberant room (RT60 300-600
ms) leaves 8-19 dB of the agent's echo, which the VAD hears as voice and Whisper as short words ("Deal.").
While the agent plays (and ``tail_ms`` after), a 10 ms frame the canceller took more than
``residual_gate_db`` out of was all echo, and is silenced; a person talking over the agent is not
cancelled (the frame keeps most of its energy) and passes whole. Where the canceller does well (RT60 300
ms: echo alone loses ~35 dB), AEC3's suppressor also ducks a person talking over the echo, by 5-12 dB
in most frames: a fixed 6 dB gate then silenced 59 % of the person's loud frames (Whisper read "Hold on
a second, I need to ask you about the quest" as "Thank you."). So the gate follows the room: it silences
only frames attenuated within ``person_margin_db`` of what echo alone loses now (a running mean of the
gated frames' attenuation), and never less than ``residual_gate_db``.
Costs about 70-120 µs of CPU per 10 ms of audio per session (about 1 % of a core), on the event loop.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.playhead import Playhead, Released
from vocab.metrics import METRICS
from vocab.options import build, require

log = logging.getLogger("voxpipe.aec")
APM_RATES_HZ = (8000, 16000, 32000, 48000)
ECHO_LOSS_SMOOTHING = 0.05  # per 10 ms frame: the echo-alone attenuation follows the room over ~200 ms
ECHO_CANCELLERS_OPEN = METRICS.gauge("voxpipe_echo_cancellers_open", "Sessions with the server-side echo canceller")


@dataclass(frozen=True, slots=True)
class EchoCancellerOptions:
    """The ``echo_canceller`` section of config.yaml."""

    enabled: bool = True  # for sessions whose hello says audio_in.aec: false (needs the livekit package)
    noise_suppression: bool = False  # WebRTC's noise suppressor too (it also dulls quiet speech)
    # the reference is fed this much ahead of the mic's estimated capture time (a margin for timing errors);
    # what starts playing within it has no reference (bench/turn_taking.py --only echo, RT60 600 ms:
    # 40 -> 10 took ERLE 9 -> 13 dB, lines cut by their echo 12 -> 1 of 20)
    lead_ms: float = 10.0
    reference_s: float = 4.0  # how much of the agent's audio is kept on the timeline
    residual_gate_db: float = 6.0  # frames attenuated more than this while the agent plays are silenced (0: off)
    person_margin_db: float = 10.0  # frames attenuated this much less than echo alone now pass (0: fixed gate)
    tail_ms: float = 600.0  # the room's echo tail: the gate stays on this long after the agent's last sample
    realign_ms: float = 40.0  # the reference follows the timing estimate only when it moved by more than this

    def validate(self) -> None:
        require(0.0 <= self.lead_ms <= 200.0, "lead_ms", "must be 0..200")
        require(0.0 <= self.residual_gate_db <= 40.0, "residual_gate_db", "must be 0..40")
        require(0.0 <= self.person_margin_db <= 60.0, "person_margin_db", "must be 0..60")
        require(0.0 <= self.tail_ms <= 3000.0, "tail_ms", "must be 0..3000")
        require(0.0 <= self.realign_ms <= 500.0, "realign_ms", "must be 0..500")
        require(1.0 <= self.reference_s <= 30.0, "reference_s", "must be 1..30")


def echo_canceller_options(extra: dict[str, Any]) -> EchoCancellerOptions:
    options: EchoCancellerOptions = build(EchoCancellerOptions, extra.get("echo_canceller"), "echo_canceller")
    return options


def available() -> bool:
    return importlib.util.find_spec("livekit") is not None


class EchoCanceller:
    """One session's canceller. Not thread-safe: every call runs on the session's event loop."""

    def __init__(self, options: EchoCancellerOptions, playhead: Playhead, *, in_rate_hz: int, now: float) -> None:
        from livekit import rtc

        self._rtc = rtc
        self.options = options
        self.playhead = playhead
        self.in_rate_hz = in_rate_hz
        self.rate_hz = in_rate_hz if in_rate_hz in APM_RATES_HZ else 16000
        self.frame = self.rate_hz // 100  # 10 ms
        self.apm = rtc.AudioProcessingModule(
            echo_cancellation=True, noise_suppression=options.noise_suppression, high_pass_filter=True
        )
        self.apm.set_stream_delay_ms(0)  # the reference is aligned on the playout timeline already
        self.t0 = now  # sample i of the reference <-> time t0 + i / rate
        self.ring = np.zeros(int(options.reference_s * self.rate_hz), dtype=np.int16)
        self.written_until = 0  # reference index after the last written sample
        self.mic_n = 0  # mic samples (at rate_hz) taken so far
        self.mic_t0: float | None = None  # server time of mic sample 0 (the least-delayed arrival)
        self._ref_at: int | None = None  # reference index paired with the next mic frame
        self._realign = int(options.realign_ms * self.rate_hz / 1000)
        self.realigned = 0
        self.pending = np.zeros(0, dtype=np.int16)
        self._in_resampler: Any = None
        self._out_resampler: Any = None
        self._ref_resamplers: dict[int, Any] = {}
        self._held: tuple[int, np.ndarray] | None = None  # a pause: (where, the audio the client holds)
        # what it did, for ERLE and cost figures (bench/turn_taking.py): mic energy in and out, CPU
        self.energy_in = self.energy_out = 0.0
        self.cpu_s = 0.0
        self.gated_frames = 0
        self._gate_ratio = 10.0 ** (-options.residual_gate_db / 10.0) if options.residual_gate_db > 0 else 0.0
        self.echo_loss_db = options.residual_gate_db  # running mean attenuation of the gated (echo-only) frames
        self._tail = int(options.tail_ms * self.rate_hz / 1000)
        self._ref_active_until = -1  # mic sample index (at rate_hz) until which the agent's echo may be heard
        self._ref_floor = self.frame * 10.0 ** (-60.0 / 10.0) * 32768.0**2  # -60 dBFS over 10 ms
        self._mic_floor = self.frame * 10.0 ** (-70.0 / 10.0) * 32768.0**2
        if self.rate_hz != in_rate_hz:
            from stages.resample import Resampler

            self._in_resampler = Resampler(in_rate_hz, self.rate_hz)
            self._out_resampler = Resampler(self.rate_hz, in_rate_hz)
        playhead.listen(on_release=self._released, on_cut=self._cut, on_resume=self._resumed, on_pause=self._paused)
        ECHO_CANCELLERS_OPEN.inc()

    def close(self) -> None:
        ECHO_CANCELLERS_OPEN.inc(-1)

    # ------------------------------------------------------------ the far end (agent audio)

    def _index(self, t: float) -> int:
        return round((t - self.t0) * self.rate_hz)

    def _released(self, released: Released) -> None:
        pcm = released.pcm
        if self.playhead.rate_hz != self.rate_hz:
            resampler = self._ref_resamplers.get(self.playhead.rate_hz)
            if resampler is None:
                from stages.resample import Resampler

                resampler = self._ref_resamplers[self.playhead.rate_hz] = Resampler(self.playhead.rate_hz, self.rate_hz)
            pcm = resampler.process(pcm)
        samples = np.frombuffer(pcm, dtype="<i2")
        at = self._index(released.play_at)
        if at <= self.written_until + 1:
            at = self.written_until  # follows the audio before it
        elif at > self.written_until:
            self._zero(self.written_until, at)
        idx = np.arange(at, at + samples.size) % self.ring.size
        self.ring[idx] = samples
        self.written_until = max(self.written_until, at + samples.size)

    def _cut(self, now: float) -> None:
        self._held = None  # a turn cut during a pause: the client dropped what it held
        end = self._index(now)
        if end < self.written_until:
            self._zero(end, self.written_until)
            self.written_until = end

    def _paused(self, paused_at: float) -> None:
        """The client holds what it had queued (up to the session's ``lead_ms``, released ahead): none of it plays
        until the resume, so the reference is silence from here, and the audio is kept for ``_resumed``.

        Left in place, AEC3 was fed the held audio as the far end while the speaker was silent, for the
        whole of each pause; after every pause its filter had the echo path to learn again (through the
        server, at RT60 600 ms: 4.8 dB of ERLE in 8 lines with 60 pauses, against 24 offline)."""
        start = max(self._index(paused_at), self.written_until - self.ring.size)
        end = self.written_until
        held = self.ring[np.arange(start, end) % self.ring.size].copy() if end > start else np.zeros(0, np.int16)
        self._zero(start, end)
        self.written_until = min(end, start)
        self._held = (start, held)

    def _resumed(self, paused_at: float, gap_s: float) -> None:
        """The client plays what it held from now on: ``gap_s`` later than it was laid out.

        Left where it was, its echo came with no reference (AEC3 cannot cancel an echo that arrives before
        its reference), was heard as voice, paused the agent again, and so on."""
        if self._held is None:
            return
        (start, held), self._held = self._held, None
        at = start + round(gap_s * self.rate_hz)
        if held.size:
            self._zero(self.written_until, at)
            self.ring[np.arange(at, at + held.size) % self.ring.size] = held
            self.written_until = at + held.size

    def _zero(self, start: int, end: int) -> None:
        count = min(end - start, self.ring.size)
        if count > 0:
            self.ring[np.arange(start, start + count) % self.ring.size] = 0

    def _reference(self, start: int) -> bytes:
        """Reference samples [start, start + frame), zero where nothing played."""
        out = np.zeros(self.frame, dtype=np.int16)
        lo = max(start, self.written_until - self.ring.size, 0)
        hi = min(start + self.frame, self.written_until)
        if hi > lo:
            out[lo - start : hi - start] = self.ring[np.arange(lo, hi) % self.ring.size]
        return out.tobytes()

    # ------------------------------------------------------------ the near end (mic)

    def process(self, pcm: bytes, now: float) -> bytes:
        """Mic audio in (arrived ``now``), the same stretch with the agent's echo removed; whole 10 ms frames
        only (up to 10 ms is held back until the rest of its frame arrives)."""
        data = pcm if self._in_resampler is None else self._in_resampler.process(pcm)
        samples = np.concatenate([self.pending, np.frombuffer(data, dtype="<i2")])
        whole = samples.size - samples.size % self.frame
        self.pending = samples[whole:].copy()
        if not whole:
            return b""
        end_n = self.mic_n + whole
        offset = now - end_n / self.rate_hz  # capture time of sample 0, as this arrival says
        if self.mic_t0 is None or offset < self.mic_t0 or offset - self.mic_t0 > 1.0:
            self.mic_t0 = offset  # the least-delayed arrival; re-anchored after a stall
        lead_s = self.options.lead_ms / 1000.0
        started = time.thread_time()  # this thread only: the models run in others
        out = bytearray()
        for k in range(0, whole, self.frame):
            captured_at = self.mic_t0 + (self.mic_n + k) / self.rate_hz - self.playhead.client_delay_s
            reference = bytearray(self._reference(self._next_reference(self._index(captured_at + lead_s))))
            self.apm.process_reverse_stream(self._rtc.AudioFrame(reference, self.rate_hz, 1, self.frame))
            mic = samples[k : k + self.frame]
            frame = self._rtc.AudioFrame(bytearray(mic.tobytes()), self.rate_hz, 1, self.frame)
            self.apm.process_stream(frame)
            cleaned = bytes(frame.data)
            ref = np.frombuffer(reference, dtype="<i2").astype(np.float64)
            if float(ref @ ref) > self._ref_floor:
                self._ref_active_until = self.mic_n + k + self._tail
            out += self._gate(mic.astype(np.float64), cleaned, self.mic_n + k)
        self.mic_n = end_n
        self.cpu_s += time.thread_time() - started
        result = bytes(out)
        return result if self._out_resampler is None else self._out_resampler.process(result)

    def _next_reference(self, estimate: int) -> int:
        """Where the reference for the next mic frame starts: one frame on from the last, so AEC3 sees one
        unbroken far-end stream. The timing estimate (mic arrivals, the client's ``played`` acks) jitters by
        milliseconds; followed frame by frame, every jitter is a jump in the far end, which AEC3's linear
        filter then has to learn again (its ERLE went 8-38 dB from run to run). Re-aligned only when the
        estimate moved by more than ``realign_ms`` (a stall, a client's underrun); AEC3's own delay
        estimator finds the rest."""
        at = self._ref_at
        if at is None or abs(estimate - at) > self._realign:
            at = estimate
            self.realigned += 1
        self._ref_at = at + self.frame
        return at

    def _gate(self, mic: np.ndarray, cleaned: bytes, n: int) -> bytes:
        """The canceller's output for one 10 ms frame, silenced when it was all echo (see the module doc)."""
        left = np.frombuffer(cleaned, dtype="<i2").astype(np.float64)
        e_in, e_out = float(mic @ mic), float(left @ left)
        self.energy_in += e_in
        self.energy_out += e_out  # ERLE is the canceller's own, before the gate
        if self._gate_ratio <= 0 or n >= self._ref_active_until or e_in <= self._mic_floor:
            return cleaned
        loss_db = 10.0 * math.log10(e_in / max(e_out, 1.0))
        if loss_db <= self.options.residual_gate_db:
            return cleaned
        bar_db = self.echo_loss_db - self.options.person_margin_db if self.options.person_margin_db > 0 else 0.0
        self.echo_loss_db += ECHO_LOSS_SMOOTHING * (loss_db - self.echo_loss_db)
        if loss_db < bar_db:
            return cleaned  # far less lost than echo alone loses: a person talks over the agent
        self.gated_frames += 1
        return bytes(len(cleaned))

"""Echo guard: keeps the agent's own voice, heard by a mic with no echo cancellation, from barging in.

On for sessions whose hello says ``audio_in.aec: false``. The agent audio that leaves the server is laid
on the session's playout timeline (``server/playhead.py``: the same clock that paces it, shifted by the
client's playout delay the playhead learns from ``played`` acks).
Each 20 ms of mic audio is compared with that reference over every echo delay up to ``max_delay_ms`` by
normalized cross-correlation; a frame the agent's voice explains (peak NCC >= ``threshold``) is silenced
before the VAD, while a person talking over the agent lowers the correlation and passes unchanged.
Chosen over a raised VAD threshold and a per-band residual gate by measurement (bench/results/echo_guard.md;
rates through the real server: bench/echo_guard.py).
The analysis runs at 8 kHz (both signals low-passed at 2.5 kHz, then decimated): it only decides,
nobody hears it; what the VAD gets is the client's audio, whole or silenced per frame.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.playhead import Playhead, Released
from transports import messages as m
from vocab.metrics import METRICS
from vocab.options import build, require

ANALYSIS_HZ = 8000
CUTOFF_HZ = 2500.0  # analysis band; voices differ well below it
FRAMES_TOTAL = METRICS.counter("voxpipe_echo_guard_frames_total", "Mic frames judged by the echo guard, by verdict")
_INT16_SCALE = 1.0 / 32768.0


@dataclass(frozen=True, slots=True)
class EchoGuardOptions:
    """The ``echo_guard`` section of config.yaml."""

    enabled: bool = True  # for sessions whose hello says audio_in.aec: false
    threshold: float = 0.9  # peak NCC at or above which a mic frame counts as the agent's echo
    max_delay_ms: float = 400.0  # echo delay covered: client output buffer + room + mic + uplink
    early_ms: float = 40.0  # and this much "early" (clock and ack error)
    reference_floor_dbfs: float = -60.0  # agent quieter than this over max_delay_ms: the mic passes
    mic_floor_dbfs: float = -55.0  # while the agent plays, quieter mic frames are silenced unjudged
    confirm_frames: int = 2  # unexplained 20 ms frames in a row before they pass (1: no hysteresis)

    def validate(self) -> None:
        require(0.0 < self.threshold < 1.0, "threshold", "must be between 0 and 1")
        require(20.0 <= self.max_delay_ms <= 2000.0, "max_delay_ms", "must be 20..2000")
        require(0.0 <= self.early_ms <= 200.0, "early_ms", "must be 0..200")
        require(1 <= self.confirm_frames <= 10, "confirm_frames", "must be 1..10")


def echo_guard_options(extra: dict[str, Any]) -> EchoGuardOptions:
    """Build the options from the config's extra sections (raises ConfigError naming a bad key)."""
    options: EchoGuardOptions = build(EchoGuardOptions, extra.get("echo_guard"), "echo_guard")
    return options


class _Decimator:
    """Stream low-pass (windowed sinc at ``CUTOFF_HZ``) and decimation to ANALYSIS_HZ from a multiple of it.

    A box filter is not enough: its aliases differ with the sub-sample phase between the mic and the
    reference, which broke the correlation of sibilants when the echo delay was an odd sample count.
    The low cutoff keeps sub-sample delays from decorrelating what is left (see ``_is_echo``).
    """

    def __init__(self, rate_hz: int) -> None:
        self.factor = rate_hz // ANALYSIS_HZ
        taps = 32 * self.factor + 1
        t = (np.arange(taps) - (taps - 1) / 2) / rate_hz
        self.kernel = 2 * CUTOFF_HZ / rate_hz * np.sinc(2 * CUTOFF_HZ * t) * np.hamming(taps)
        self.history = np.zeros(taps - 1)
        self.phase = 0  # input samples to skip before the next kept one

    def reset(self) -> None:
        self.history[:] = 0.0
        self.phase = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self.factor == 1:
            return samples
        data = np.concatenate([self.history, samples])
        self.history = data[data.size - self.history.size :]
        filtered = np.convolve(data, self.kernel, mode="valid")  # one output per new input sample
        kept: np.ndarray = filtered[self.phase :: self.factor]
        self.phase = (self.phase - samples.size) % self.factor
        return kept


def _dbfs(energy: float, n: int) -> float:
    return 10.0 * math.log10(energy / max(n, 1) + 1e-12)


class EchoGuard:
    """Per-session state. Not thread-safe: every method runs on the session's event loop."""

    def __init__(self, options: EchoGuardOptions, playhead: Playhead, *, in_rate_hz: int, now: float) -> None:
        self.options = options
        self.playhead = playhead
        out_rate_hz = playhead.rate_hz
        self.mic_decimator = _Decimator(in_rate_hz)
        self.ref_decimator = _Decimator(out_rate_hz)
        self.out_rate_hz = out_rate_hz
        self.in_frame_bytes = in_rate_hz // 50 * 2  # 20 ms
        self.frame = ANALYSIS_HZ // 50
        self.max_lag = int(options.max_delay_ms * ANALYSIS_HZ / 1000)
        self.early = int(options.early_ms * ANALYSIS_HZ / 1000)
        self.window = self.frame + self.max_lag + self.early
        self.nfft = 1 << (self.window + self.frame).bit_length()
        self.mic_floor = options.mic_floor_dbfs
        self.ref_floor_energy = self.frame * 10.0 ** (options.reference_floor_dbfs / 10.0)
        self.segment_floor_energy = self.frame * 10.0 ** (-90.0 / 10.0)
        # reference ring at ANALYSIS_HZ; absolute index i <-> time t0 + i / ANALYSIS_HZ
        self.t0 = now
        self.ring = np.zeros(1 << (8 * ANALYSIS_HZ).bit_length(), dtype=np.float64)  # > 8 s
        self.written_until = 0  # absolute index after the last reference sample
        # mic timeline: sample n (at ANALYSIS_HZ) was captured at about mic_t0 + n / ANALYSIS_HZ
        self.mic_n = 0
        self.mic_anchor: deque[float] = deque(maxlen=100)  # ~2 s of (arrival - n / rate)
        self.mic_t0: float | None = None
        self.pending = b""
        self.unexplained_run = 0
        self.frames = 0
        self.echo_frames = 0

    @classmethod
    def for_hello(cls, hello: m.Hello, options: EchoGuardOptions | None, playhead: Playhead) -> EchoGuard | None:
        """A guard following ``playhead`` when the client has no echo cancellation and the guard is on; else None."""
        if options is None or not options.enabled or hello.audio_in.aec is not False:
            return None
        guard = cls(options, playhead, in_rate_hz=hello.audio_in.rate, now=playhead.clock())
        playhead.listen(on_release=guard.sent, on_cut=guard.cut)
        return guard

    # ------------------------------------------------------------ reference (agent audio)

    def _index(self, t: float) -> int:
        return round((t - self.t0) * ANALYSIS_HZ)

    def sent(self, released: Released) -> None:
        """Agent audio left the playhead; it plays from ``released.play_at``."""
        samples = np.frombuffer(released.pcm, dtype="<i2").astype(np.float64) * _INT16_SCALE
        at = self._index(released.play_at)
        contiguous = at <= self.written_until + 1  # follows the audio before it (within a sample)
        if not contiguous:
            self.ref_decimator.reset()  # silence came before: the filter starts from zeros
        self._write(self.written_until if contiguous else at, self.ref_decimator.process(samples))

    def _write(self, at: int, pooled: np.ndarray) -> None:
        size = self.ring.size
        if at > self.written_until:  # silence since the last audio
            self._fill(self.written_until, min(at - self.written_until, size), 0.0)
        end = at + pooled.size
        idx = np.arange(at, end) % size
        self.ring[idx] = pooled
        self.written_until = max(self.written_until, end)

    def _fill(self, start: int, count: int, value: float) -> None:
        idx = np.arange(start, start + count) % self.ring.size
        self.ring[idx] = value

    def cut(self, now: float) -> None:
        """The turn was interrupted: the client flushes its playback, so the reference ends now."""
        end = self._index(now)
        if end < self.written_until:
            self._fill(end, self.written_until - end, 0.0)
            self.written_until = end
        self.ref_decimator.reset()

    # ------------------------------------------------------------ mic

    def process(self, pcm: bytes, now: float) -> bytes:
        """Mic audio in (arrived ``now``), the same audio out with echo-only 20 ms frames silenced.

        Whole frames only: up to 20 ms is held back until the rest of its frame arrives.
        """
        data = self.pending + pcm
        whole = len(data) - len(data) % self.in_frame_bytes
        self.pending = data[whole:]
        if not whole:
            return b""
        n_frames = whole // self.in_frame_bytes
        end_n = self.mic_n + n_frames * self.frame
        mic_t0 = self._anchor(now, end_n)
        out = bytearray(data[:whole])
        samples = np.frombuffer(data[:whole], dtype="<i2").astype(np.float64) * _INT16_SCALE
        mic = self.mic_decimator.process(samples)
        for k in range(n_frames):
            frame = mic[k * self.frame : (k + 1) * self.frame]
            frame_end_t = mic_t0 + (self.mic_n + (k + 1) * self.frame) / ANALYSIS_HZ
            if self._is_echo(frame, frame_end_t):
                start = k * self.in_frame_bytes
                out[start : start + self.in_frame_bytes] = bytes(self.in_frame_bytes)
        self.mic_n = end_n
        return bytes(out)

    def _anchor(self, now: float, end_n: int) -> float:
        """Map mic samples to server time: the least-delayed recent arrival; re-anchor after a stall."""
        offset = now - end_n / ANALYSIS_HZ
        if self.mic_t0 is not None and offset - self.mic_t0 > 1.0:
            self.mic_anchor.clear()  # the mic stopped for a while: its old timeline is gone
        self.mic_anchor.append(offset)
        self.mic_t0 = min(self.mic_anchor)
        return self.mic_t0

    def _reference(self, end: int) -> np.ndarray:
        """Reference samples [end - window, end), zero where nothing was written."""
        start = end - self.window
        out = np.zeros(self.window)
        lo, hi = max(start, self.written_until - self.ring.size + 1, 0), min(end, self.written_until)
        if hi > lo:
            out[lo - start : hi - start] = self.ring[np.arange(lo, hi) % self.ring.size]
        return out

    def _is_echo(self, frame: np.ndarray, frame_end_t: float) -> bool:
        self.frames += 1
        ref = self._reference(self._index(frame_end_t - self.playhead.client_delay_s) + self.early)
        cum = np.concatenate(([0.0], np.cumsum(ref * ref)))
        n = self.frame
        seg_energy = cum[n:] - cum[:-n]  # energy of every frame-long reference segment (one per lag)
        if float(seg_energy.max()) < self.ref_floor_energy:
            self.unexplained_run = self.options.confirm_frames  # no agent audio: a voice passes at once
            FRAMES_TOTAL.inc(verdict="no_reference")
            return False  # the agent has not played within max_delay_ms: nothing to guard
        energy = float(frame @ frame)
        if _dbfs(energy, n) < self.mic_floor:
            # Quiet while the agent plays: an echo tail, not a person; VADs such as webrtcvad call
            # even -90 dBFS speech-like, so it is silenced rather than passed.
            self._count_echo("quiet")
            return True
        # NCC of the frame with every reference segment (lags -early..max_delay), via FFT, at half-sample
        # lag steps (the cross-spectrum zero-padded 2x): a real echo's delay is no whole sample count.
        spectrum = np.fft.rfft(ref, self.nfft) * np.conj(np.fft.rfft(frame, self.nfft))
        corr = 2.0 * np.fft.irfft(spectrum, 2 * self.nfft)[: 2 * (ref.size - n) + 1]
        seg = np.empty(corr.size)
        seg[0::2] = seg_energy
        seg[1::2] = 0.5 * (seg_energy[:-1] + seg_energy[1:])
        audible = seg > self.segment_floor_energy  # a silent stretch explains nothing
        ncc = np.where(audible, np.abs(corr) / np.sqrt(np.maximum(seg, 1e-12) * energy), 0.0)
        if float(ncc.max()) >= self.options.threshold:
            self.unexplained_run = 0
            self._count_echo("echo")
            return True
        # A jump in the client's playout (an underrun) leaves one or two frames that straddle two
        # alignments; a person talking leaves a run of them. Pass from the second in a row on.
        self.unexplained_run += 1
        if self.unexplained_run < self.options.confirm_frames:
            self._count_echo("unconfirmed")
            return True
        FRAMES_TOTAL.inc(verdict="passed")
        return False

    def _count_echo(self, verdict: str) -> None:
        self.echo_frames += 1
        FRAMES_TOTAL.inc(verdict=verdict)

"""Building and running the game-engine client harnesses (clients/unity, clients/unreal) for the tests.

Builds are cached in the temp dir under a hash of the sources, the command and the compiler's version,
so a second run starts at once. A missing toolchain is a ``pytest.skip`` with the reason printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.client import test_config

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(tempfile.gettempdir()) / "voxpipe-native-builds"
INSTALL_HINT = "apt-get install {pkgs} (or scripts/install-system-deps.sh)"


def require_tools(*tools: str, pkgs: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not found: {INSTALL_HINT.format(pkgs=pkgs)}"
        print(f"SKIP: {reason}")
        pytest.skip(reason)


def require_headers(*headers: str, pkgs: str) -> None:
    """Skip unless g++ finds every header (checked by preprocessing a one-line file)."""
    source = "".join(f"#include <{h}>\n" for h in headers)
    proc = subprocess.run(
        ["g++", "-std=c++17", "-E", "-x", "c++", "-", "-o", os.devnull],
        input=source,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        reason = f"C++ headers {', '.join(headers)} not usable: {INSTALL_HINT.format(pkgs=pkgs)}"
        print(f"SKIP: {reason}\n{proc.stderr[-500:]}")
        pytest.skip(reason)


def _tool_version(tool: str) -> str:
    proc = subprocess.run([tool, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.splitlines()[0] if proc.stdout else tool


def build_cached(name: str, sources: list[Path], command: list[str]) -> Path:
    """Run ``command`` (``{out}`` in an argument stands for the output path) unless a build of the same
    inputs is cached; returns the built file."""
    digest = hashlib.sha256()
    digest.update(repr(command).encode())
    digest.update(_tool_version(command[0]).encode())
    for source in sorted(sources):
        digest.update(str(source.relative_to(ROOT)).encode())
        digest.update(source.read_bytes())
    folder = CACHE_DIR / f"{name}-{digest.hexdigest()[:16]}"
    target = folder / name
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f"{name}.partial-{os.getpid()}"
    args = [arg.replace("{out}", str(partial)) for arg in command]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"building {name} failed ({' '.join(args)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    partial.replace(target)  # atomic: a concurrent run never sees half a binary
    return target


@dataclass(frozen=True, slots=True)
class HarnessRun:
    returncode: int
    output: str


async def run_harness(args: list[str], timeout_s: float = 60.0) -> HarnessRun:
    """Run a harness without blocking the event loop (the server under test runs in the same loop)."""
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    out = bytearray()

    async def read_all() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(4096):
            out.extend(chunk)
        await proc.wait()

    try:
        async with asyncio.timeout(timeout_s):
            await read_all()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        so_far = out.decode(errors="replace")
        raise AssertionError(f"{args[0]} did not finish within {timeout_s} s; its output so far:\n{so_far}") from None
    output = out.decode(errors="replace")
    print(output)
    return HarnessRun(proc.returncode if proc.returncode is not None else -1, output)


@dataclass
class LiveHarness:
    """A harness still running: the test reads its output line by line (and acts on a line, such as
    cutting the connection when it prints ``drop:``), then waits for the end."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)

    async def line_starting(self, prefix: str, timeout_s: float = 30.0) -> str:
        """The next output line that starts with ``prefix`` (the lines before it are kept too)."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"the harness ended before a line starting {prefix!r}:\n{self.output}")
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append(line)
                if line.startswith(prefix):
                    return line

    async def finish(self, timeout_s: float = 60.0) -> HarnessRun:
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                rest = await self.proc.stdout.read()
                await self.proc.wait()
        except TimeoutError:
            raise AssertionError(f"the harness did not finish within {timeout_s} s:\n{self.output}") from None
        self.lines += rest.decode(errors="replace").splitlines()
        print(self.output)
        return HarnessRun(self.proc.returncode if self.proc.returncode is not None else -1, self.output)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@contextlib.asynccontextmanager
async def live_harness(args: list[str]) -> AsyncIterator[LiveHarness]:
    """Start a harness (stdout and stderr merged); killed on exit if it is still running."""
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        yield LiveHarness(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def field_of(output: str, prefix: str) -> str:
    """The rest of the first output line starting with ``prefix``."""
    for line in output.splitlines():
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise AssertionError(f"no line starting {prefix!r} in:\n{output}")


@dataclass(frozen=True, slots=True)
class WavInfo:
    rate_hz: int
    channels: int
    sample_width: int
    duration_ms: float
    peak: int
    rms_dbfs: float


def read_wav(path: Path) -> WavInfo:
    with wave.open(str(path), "rb") as w:
        frames = w.readframes(w.getnframes())
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float64)
        rms = float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0
        return WavInfo(
            rate_hz=w.getframerate(),
            channels=w.getnchannels(),
            sample_width=w.getsampwidth(),
            duration_ms=1000.0 * w.getnframes() / w.getframerate(),
            peak=int(np.max(np.abs(samples))) if samples.size else 0,
            rms_dbfs=20 * np.log10(rms / 32768.0) if rms > 0 else -120.0,
        )


def backchannel_config() -> dict[str, Any]:
    """The server in barge_in "words" mode on the test engines (as tests/server/test_barge_in.py): a tone
    shorter than 400 ms "says" "yeah" (a backchannel), so a short tone over the agent pauses it and then
    resumes it; the tone TTS speaks 100 ms per word, with no gaps."""
    return test_config(
        pipeline=[
            {"name": "vad", "engine": "energy", "start_ms": 60, "end_ms": 200},
            {"name": "asr", "engine": "duration_asr", "short_ms": 400, "short_text": "yeah"},
            {"name": "llm", "engine": "echo", "delay_ms": 5},
            {"name": "tts", "engine": "tone", "word_ms": 100, "gap_ms": 0},
        ],
        session={"barge_in": "words", "barge_in_window_ms": 400},
    )


PAUSED = re.compile(
    r"pause: turn (?P<turn>\d+), paused with (?P<played>\d+) samples played and (?P<buffered>\d+) buffered, "
    r"resumed (?P<ms>\d+) ms later with (?P<while_paused>-?\d+) played while paused"
)
PLAYED = re.compile(r"pause: received (?P<received>\d+) samples, played (?P<played>\d+), in order (?P<in_order>yes|no)")


def check_held(output: str, rate_hz: int, words: int = 40) -> None:
    """A harness's ``--pause`` lines: it held its playback from ``agent_paused`` to ``agent_resumed`` (with
    audio buffered to hold), then played every sample of the agent's ``words`` (100 ms each), in order."""
    paused = PAUSED.search(output)
    assert paused, f"no pause line (agent_paused and agent_resumed both handled) in:\n{output}"
    assert int(paused["buffered"]) > 0, "nothing was buffered at the pause: the hold was not put to the test"
    assert int(paused["played"]) > 0, "the pause came before any playback"
    assert int(paused["while_paused"]) == 0, f"{paused['while_paused']} samples played while paused"
    assert int(paused["ms"]) > 50, "the pause lasted long enough for playback to have moved on"
    played = PLAYED.search(output)
    assert played, f"no playback line in:\n{output}"
    expected = words * rate_hz // 10
    assert (int(played["received"]), int(played["played"])) == (expected, expected), "all received, all played"
    assert played["in_order"] == "yes", "played from where it paused: every sample once, in order"

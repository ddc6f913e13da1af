"""clients/unity: the C# VoxpipeClient's console harness, built with Debian's mcs, against the real server
(and through a proxy that cuts its connection mid-turn: the client resumes on its own)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.client import running_server, test_config
from tests.native import ROOT, backchannel_config, build_cached, check_held, read_wav, require_tools, run_harness
from tests.proxy import cuttable_proxy
from tests.resuming import check_backoff, check_new_session, check_resumed, run_with_a_drop
from tests.services import redis_server

UNITY = ROOT / "clients" / "unity"
PKGS = "mono-mcs mono-runtime"


@pytest.fixture(scope="module")
def harness_exe() -> Path:
    require_tools("mcs", "mono", pkgs=PKGS)
    sources = [*sorted((UNITY / "Runtime").glob("*.cs")), UNITY / "Harness" / "Harness.cs"]
    command = ["mcs", "-nologo", "-warnaserror+", "-out:{out}", *[str(s) for s in sources]]
    return build_cached("harness.exe", sources, command)


@pytest.mark.timeout(180)
async def test_harness_passes_against_the_real_server(harness_exe: Path, tmp_path: Path) -> None:
    wav = tmp_path / "say.wav"
    async with running_server(test_config()) as srv:
        run = await run_harness(["mono", str(harness_exe), srv.url, str(wav), "--rate", "24000"])
    assert run.returncode == 0, run.output
    assert "OK: all checks held" in run.output
    assert "reply: You said: hello from unity." in run.output
    info = read_wav(wav)
    assert (info.rate_hz, info.channels, info.sample_width) == (24000, 1, 2)
    # 15 words x 100 ms tones (the test TTS)
    assert info.duration_ms == pytest.approx(1500, abs=1)
    assert info.peak > 8000
    assert info.rms_dbfs > -20


@pytest.mark.timeout(180)
async def test_harness_fails_loudly_when_a_check_does_not_hold(harness_exe: Path, tmp_path: Path) -> None:
    # No TTS stage: `say` gets error unknown_stage and no audio, so the harness must exit nonzero.
    pipeline = test_config()["pipeline"][:3]
    async with running_server(test_config(pipeline=pipeline)) as srv:
        run = await run_harness(["mono", str(harness_exe), srv.url, str(tmp_path / "x.wav")], timeout_s=90)
    assert run.returncode == 1, run.output
    assert "FAIL: server error unknown_stage" in run.output
    assert "FAIL: say: no audio received" in run.output


@pytest.mark.timeout(180)
async def test_harness_holds_its_playback_while_the_agent_is_paused_and_loses_none(
    harness_exe: Path, tmp_path: Path
) -> None:
    # a short tone over the agent ("yeah" to the test ASR): agent_paused, then agent_resumed
    async with running_server(backchannel_config()) as srv:
        args = ["mono", str(harness_exe), srv.url, str(tmp_path / "x.wav"), "--rate", "24000", "--pause"]
        run = await run_harness(args)
    assert run.returncode == 0, run.output
    assert "OK: all checks held" in run.output
    check_held(run.output, rate_hz=24000)


async def test_harness_exits_2_when_it_cannot_connect(harness_exe: Path, tmp_path: Path) -> None:
    run = await run_harness(["mono", str(harness_exe), "ws://127.0.0.1:9/ws", str(tmp_path / "x.wav")])
    assert run.returncode == 2, run.output
    assert "ERROR:" in run.output


@pytest.mark.timeout(180)
@pytest.mark.parametrize("rewind", [0, 1000], ids=["exact", "rewound"])
async def test_harness_resumes_mid_turn_after_its_connection_is_reset(
    harness_exe: Path, tmp_path: Path, rewind: int
) -> None:
    # rewound: the resume asks for the whole tail again; what the client already handled must be ignored
    async with running_server(test_config()) as srv, cuttable_proxy(srv.port) as proxy:
        args = ["mono", str(harness_exe), proxy.url(), str(tmp_path / "say.wav"), "--drop", "--rewind", str(rewind)]
        dropped = await run_with_a_drop(args, [srv], proxy)
    # say (1 message) + text (2) + a say cut before a word played (0) + the long text and its cut answer (2)
    check_resumed(dropped, remembers=5, rewind=rewind)
    spoken = dropped.field("resume: turn").split('spoken "')[1].rstrip('"')
    assert spoken.startswith("You said: a")  # 25 chunks (500 ms) were received, ~300-400 ms of them played
    assert dropped.after.history.messages()[-3] == {"role": "assistant", "content": spoken}  # cut where it played
    assert proxy.accepted == 2


@pytest.mark.timeout(180)
async def test_harness_starts_a_new_session_when_its_resume_is_refused(harness_exe: Path, tmp_path: Path) -> None:
    async with (
        running_server(test_config()) as srv,
        running_server(test_config()) as other,  # its own resume secret and store: it knows no session
        cuttable_proxy(srv.port) as proxy,
    ):
        args = ["mono", str(harness_exe), proxy.url(), str(tmp_path / "say.wav"), "--drop"]
        dropped = await run_with_a_drop(args, [srv, other], proxy, move_to=other)
    check_new_session(dropped)
    assert "OK: all checks held" in dropped.run.output


@pytest.mark.timeout(180)
async def test_harness_backs_off_while_the_server_is_unreachable(harness_exe: Path, tmp_path: Path) -> None:
    async with running_server(test_config()) as srv, cuttable_proxy(srv.port) as proxy:
        args = ["mono", str(harness_exe), proxy.url(), str(tmp_path / "say.wav"), "--drop"]
        dropped = await run_with_a_drop(args, [srv], proxy, refuse=3)
    check_backoff(dropped, refused=3, initial_ms=250, max_ms=5000)  # VoxpipeOptions' defaults
    check_resumed(dropped, remembers=5, rewind=0)


@pytest.mark.timeout(180)
async def test_harness_resumes_on_another_server_when_its_server_drains(
    harness_exe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two workers sharing a resume secret and a real Redis: going_away from one means "resume now, elsewhere"
    async with redis_server() as redis_url:
        monkeypatch.setenv("VOXPIPE_REDIS_URL", redis_url)
        monkeypatch.setenv("VOXPIPE_RESUME_SECRET", "s" * 32)
        shared = test_config(state={"backend": "redis"})
        async with running_server(shared) as old, running_server(shared) as new, cuttable_proxy(old.port) as proxy:
            args = ["mono", str(harness_exe), proxy.url(), str(tmp_path / "say.wav"), "--drop"]
            dropped = await run_with_a_drop(args, [old, new], proxy, move_to=new, drain=old)
    assert dropped.server is new  # picked up by the other worker, from Redis
    assert "after going_away" in dropped.field("reconnecting: attempt 1 after 0 ms")  # at once: no backoff
    check_resumed(dropped, remembers=5, rewind=0)

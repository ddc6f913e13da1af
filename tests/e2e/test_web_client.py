"""The demo page in headless Chromium against the real server: talk through a fake mic, hear the agent.

Chromium's fake capture device plays a WAV of tone bursts (the test stages hear them: energy VAD,
duration ASR). Assertions are on the page's DOM (stable ids / data-testid). Needs Debian's
``chromium`` (``scripts/install-system-deps.sh``) and Playwright for Python, which drives that
binary; ``playwright install`` (a browser download) is never used.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.client import running_server, silence, test_config, tone
from tests.proxy import cuttable_proxy
from tests.services import redis_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    print("\ntests/test_web_client.py: skipped, no chromium binary (apt-get install chromium)")
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.async_api", reason="Playwright for Python is not installed")

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
MIC_RATE_HZ = 48000
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]

pytestmark = pytest.mark.timeout(90)
REFUSED_ATTEMPT = re.compile(
    r"^WebSocket connection to '\S+' failed: "
    r"Error (in connection establishment|during WebSocket handshake): net::ERR_[A-Z_]+$"
)


def write_mic_wav(path: Path) -> Path:
    """What the fake microphone says, in a loop: an 800 ms tone burst, then 3.2 s of quiet."""
    pcm = tone(800, MIC_RATE_HZ, amplitude=0.3) + silence(3200, MIC_RATE_HZ)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(MIC_RATE_HZ)
        out.writeframes(pcm)
    return path


@pytest.fixture
async def page(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A fresh Chromium profile whose microphone plays the tone-burst WAV; fails on any page error.

    The page's last messages are saved to ``test-artifacts/<test>.messages.json`` for post-mortems.
    """
    wav = write_mic_wav(tmp_path / "mic.wav")
    problems: list[str] = []
    async with playwright_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=[*FLAGS, f"--use-file-for-fake-audio-capture={wav}"],
            viewport={"width": 1280, "height": 800},
        )
        try:
            tab = context.pages[0] if context.pages else await context.new_page()
            tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

            def on_console(msg: Any) -> None:
                # Chromium reports each refused WebSocket attempt itself; the page backs off and retries (a
                # test server that stopped while the page was connected): the browser's line, not a page error
                if msg.type == "error" and not REFUSED_ATTEMPT.search(msg.text):
                    problems.append(f"console error: {msg.text}")

            tab.on("console", on_console)
            yield tab
        finally:
            with contextlib.suppress(Exception):
                log = await tab.evaluate("JSON.stringify(window.voxpipe.log, null, 1)")
                ARTIFACTS.mkdir(exist_ok=True)
                (ARTIFACTS / f"{request.node.name}.messages.json").write_text(log)
                html = await tab.inner_html("#conversation")
                (ARTIFACTS / f"{request.node.name}.conversation.html").write_text(html)
            await context.close()
    assert not problems, problems


async def played_ms(tab: Any) -> int:
    return int(await tab.inner_text("#played-ms"))


async def wait_played_over(tab: Any, ms: int, timeout_ms: int = 10000) -> None:
    await tab.wait_for_function(f"Number(document.querySelector('#played-ms').textContent) > {ms}", timeout=timeout_ms)


async def connect(tab: Any, url: str) -> None:
    await tab.goto(url)
    await tab.wait_for_selector("[data-testid=stage-tts]")  # the picker is filled from /healthz
    await tab.click("#connect")
    await tab.wait_for_selector("#conn-state[data-state=ready]")


async def type_and_press(tab: Any, text: str, button: str) -> None:
    await tab.fill("#text-input", text)
    await tab.click(button)


async def test_talk_text_and_say_over_the_websocket(page: Any) -> None:
    async with running_server(test_config()) as server:
        await connect(page, server.http_url)
        assert await page.inner_text("#conn-state") == "connected · msgpack"

        # Speech: the fake mic's tone burst becomes a final transcript, a streamed reply, and played audio.
        await page.click("#mic")
        final = page.locator("[data-testid=user-text][data-final=true]").first
        await final.wait_for(timeout=15000)
        assert (await final.inner_text()).startswith("heard ")
        reply = page.locator("[data-testid=agent-text][data-final=true]").first
        await reply.wait_for(timeout=5000)
        assert (await reply.inner_text()).startswith("You said: heard ")
        await wait_played_over(page, 500)
        v2v = page.locator("#metrics-table tbody tr").first.locator("td").last
        assert float(await v2v.inner_text()) > 0  # voice-to-voice of a spoken turn
        assert int(await page.inner_text("#sent-ms")) > 1000
        await page.click("#mic")  # mic off (commits), so the text turns below run undisturbed
        await page.wait_for_timeout(1500)

        # "Send to LLM": a text turn answered by the echo LLM.
        await type_and_press(page, "hello from the browser", "#send-text")
        answer = page.locator("[data-testid=agent-text]", has_text="You said: hello from the browser.")
        await answer.wait_for(timeout=5000)

        # "Speak this": the agent says exactly the text, and the page plays it.
        before = await played_ms(page)
        await type_and_press(page, "speak exactly this", "#say-text")
        await page.locator(".turn.done", has_text="speak exactly this").wait_for(timeout=10000)
        await wait_played_over(page, before + 250)  # three tone words of 100 ms
        assert await page.locator("#metrics-table tbody tr").count() == 3

        assert await page.locator("#errors li").count() == 0, await page.inner_text("#errors")
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "web-client.png"
        await page.screenshot(path=str(shot), full_page=True)
        if os.environ.get("VOXPIPE_UPDATE_SCREENSHOT"):
            shutil.copy(shot, ROOT / "docs" / "screenshot.png")
        await page.click("#connect")  # disconnect: bye, the server closes with 1000
        await page.wait_for_selector("#conn-state[data-state=closed]")
        assert await page.locator("#errors li").count() == 0


async def test_webrtc_audio_path_with_json_framing_and_interrupt(page: Any) -> None:
    async with running_server(test_config()) as server:
        await page.goto(server.http_url)
        await page.check("#json-framing")
        await page.check("#path-webrtc")
        await page.wait_for_selector("[data-testid=stage-tts]")
        await page.click("#connect")
        await page.wait_for_selector("#conn-state[data-state=ready]")
        assert await page.inner_text("#conn-state") == "connected · json"
        await page.wait_for_selector("#rtc-state[data-state=connected]", timeout=15000)

        # The mic goes over the peer connection (nothing over the socket), the agent comes back on the track.
        await page.locator("[data-testid=user-text][data-final=true]").first.wait_for(timeout=15000)
        await page.locator("[data-testid=agent-text][data-final=true]").first.wait_for(timeout=5000)
        await wait_played_over(page, 300)  # heard on the remote track (analyser above -40 dBFS)
        assert await page.inner_text("#sent-ms") == "0"

        # Interrupt a long `say`: the page shows the cut-off turn.
        await page.click("#mic")
        await page.wait_for_timeout(1500)
        await type_and_press(page, " ".join(["word"] * 30), "#say-text")
        await page.locator("[data-testid=agent-text]", has_text="word word").wait_for(timeout=5000)
        await page.wait_for_timeout(600)
        await page.click("#interrupt")
        status = page.locator("[data-testid=turn-status]", has_text="interrupted after")
        await status.wait_for(timeout=3000)
        assert (await page.locator(".turn.interrupted .unspoken").inner_text()).strip().startswith("word")
        assert await page.locator("#errors li").count() == 0, await page.inner_text("#errors")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "web-client-webrtc.png"), full_page=True)


async def test_stage_picker_subscribes_to_the_chosen_stages(page: Any) -> None:
    async with running_server(test_config()) as server:
        await page.goto(server.http_url)
        await page.wait_for_selector("[data-testid=stage-tts]")
        await page.uncheck("[data-testid=stage-llm]")
        await page.click("#connect")
        await page.wait_for_selector("#conn-state[data-state=ready]")
        await type_and_press(page, "no reply text please", "#send-text")
        # Not subscribed to the LLM: no reply text, but the TTS stage's audio still plays.
        await wait_played_over(page, 300)
        assert await page.locator("[data-testid=agent-text][data-final=true]").count() == 0
        assert await page.locator(".turn").count() == 1


CAPTURE_PROBE = """async ([freqHz, seconds]) => {
  const ctx = new OfflineAudioContext({ numberOfChannels: 1, length: 48000 * seconds, sampleRate: 48000 });
  await ctx.audioWorklet.addModule("worklets/capture.js");
  const node = new AudioWorkletNode(ctx, "voxpipe-capture", { processorOptions: { targetRate: 16000, frameMs: 20 } });
  const frames = [];
  node.port.onmessage = (e) => frames.push(new Int16Array(e.data.pcm));
  const osc = new OscillatorNode(ctx, { frequency: freqHz });
  const gain = new GainNode(ctx, { gain: 0.5 });
  osc.connect(gain).connect(node).connect(ctx.destination);
  osc.start();
  await ctx.startRendering();
  await new Promise((r) => setTimeout(r, 200));  // the last port messages
  const pcm = frames.flatMap((f) => Array.from(f));
  const body = pcm.slice(1600);  // skip the filter's settling
  const rms = Math.sqrt(body.reduce((s, x) => s + (x / 32768) ** 2, 0) / body.length);
  let crossings = 0;
  for (let i = 1; i < body.length; i++) if ((body[i - 1] < 0) !== (body[i] < 0)) crossings++;
  return { samples: pcm.length, frames: frames.length, rms, freqHz: (crossings / 2) / (body.length / 16000) };
}"""


async def test_capture_worklet_resamples_a_48k_context_to_16k(page: Any) -> None:
    """The path Firefox takes (a mic cannot feed a 16 kHz context there): the worklet resamples itself."""
    async with running_server(test_config()) as server:
        await page.goto(server.http_url)
        low = await page.evaluate(CAPTURE_PROBE, [440, 1])
        assert low["frames"] == 50  # 1 s in 20 ms frames of 320 samples
        assert low["samples"] == 16000
        assert abs(low["freqHz"] - 440) < 5
        assert 0.33 < low["rms"] < 0.37  # a 0.5 sine keeps its level (0.354)
        high = await page.evaluate(CAPTURE_PROBE, [12000, 1])  # above 8 kHz: must not alias into the band
        assert high["rms"] < low["rms"] / 4, high


PLAYBACK_PROBE = """async ([pauseAt, resumeAt]) => {
  const rate = 16000;
  const ctx = new OfflineAudioContext({ numberOfChannels: 1, length: rate * 2, sampleRate: rate });
  await ctx.audioWorklet.addModule("worklets/playback.js");
  const node = new AudioWorkletNode(ctx, "voxpipe-playback", { processorOptions: { prebufferMs: 0 } });
  node.connect(ctx.destination);
  const pcm = new Int16Array(rate);  // 1 s of a 440 Hz tone at half scale
  for (let i = 0; i < pcm.length; i++) pcm[i] = Math.round(16384 * Math.sin((2 * Math.PI * 440 * i) / rate));
  const settle = () => new Promise((r) => setTimeout(r, 50));  // the worklet takes its port messages
  node.port.postMessage({ type: "chunk", turn: 1, pcm: pcm.buffer, rate }, [pcm.buffer]);
  node.port.postMessage({ type: "end", turn: 1 });
  await settle();
  ctx.suspend(pauseAt).then(async () => { node.port.postMessage({ type: "pause" }); await settle(); ctx.resume(); });
  ctx.suspend(resumeAt).then(async () => { node.port.postMessage({ type: "resume" }); await settle(); ctx.resume(); });
  const out = (await ctx.startRendering()).getChannelData(0);
  const block = rate / 100;  // 10 ms
  const loud = [];
  for (let b = 0; b < out.length / block; b++) {
    let sum = 0;
    for (let i = b * block; i < (b + 1) * block; i++) sum += out[i] * out[i];
    loud.push(Math.sqrt(sum / block) > 0.1);
  }
  return { loud_ms: loud.filter(Boolean).length * 10, first_quiet_ms: loud.indexOf(false) * 10,
           back_ms: loud.indexOf(true, loud.indexOf(false)) * 10 };
}"""


async def test_playback_holds_the_agent_s_audio_while_paused_and_loses_none(page: Any) -> None:
    """agent_paused / agent_resumed: the page holds playback where it is and goes on from there."""
    async with running_server(test_config()) as server:
        await page.goto(server.http_url)
        got = await page.evaluate(PLAYBACK_PROBE, [0.3, 0.7])
        assert abs(got["first_quiet_ms"] - 300) <= 30, got  # held at the pause
        assert abs(got["back_ms"] - 700) <= 30, got  # and back at the resume
        assert abs(got["loud_ms"] - 1000) <= 30, got  # the whole second of audio played: nothing dropped


def proxied_config(**sections: Any) -> dict[str, Any]:
    """The page comes from the server, its socket goes through a proxy on another port: another origin,
    which the default (only the server's own page, issue 13) refuses; these tests allow it."""
    return test_config(auth={"allowed_origins": ["*"]}, **sections)


async def connect_through(tab: Any, page_url: str, ws_url: str) -> None:
    """Open the page, point it at ``ws_url`` (a proxy the test can cut), connect."""
    await tab.goto(page_url)
    await tab.wait_for_selector("[data-testid=stage-tts]")
    await tab.fill("#server-url", ws_url)
    await tab.click("#connect")
    await tab.wait_for_selector("#conn-state[data-state=ready]")


async def wait_state_label(tab: Any, label: str, timeout_ms: int = 15000) -> None:
    await tab.wait_for_function(f"document.querySelector('#conn-state').textContent === {label!r}", timeout=timeout_ms)


async def disconnect(tab: Any) -> None:
    """bye: the session ends for good, and the page does not try to resume when the servers stop."""
    await tab.click("#connect")
    await tab.wait_for_selector("#conn-state[data-state=closed]")


async def agent_said(tab: Any, text: str, timeout_ms: int = 10000) -> None:
    await tab.locator(".turn.done [data-testid=agent-text]", has_text=text).wait_for(timeout=timeout_ms)


@pytest.mark.parametrize("rewind", [0, 1000], ids=["exact", "rewound"])
async def test_the_page_resumes_mid_turn_after_its_connection_is_reset(page: Any, rewind: int) -> None:
    async with running_server(proxied_config()) as server, cuttable_proxy(server.port) as proxy:
        # rewound: the resume asks for the whole tail again; what the page already handled must be ignored
        await connect_through(page, f"{server.http_url}?resume_rewind={rewind}", proxy.url())
        await type_and_press(page, "hello before the drop", "#send-text")
        await agent_said(page, "You said: hello before the drop. I remember 0 messages.")
        before = await played_ms(page)
        await type_and_press(page, "a long story " + " ".join(f"w{i}" for i in range(30)), "#send-text")
        # mid-turn: a few words of the answer heard (up to lead_ms of the first answer may still be playing
        # when it reads as done, so 300 ms could end within 16 ms of the long answer: nothing heard yet)
        await wait_played_over(page, before + 800)
        (session_id,) = server.sessions
        assert proxy.cut() == 1  # TCP reset: no close frame, no bye

        await wait_state_label(page, "reconnected · msgpack")
        assert await page.get_attribute("#conn-state", "data-state") == "ready"
        assert await page.inner_text("#resume-count") == "1"
        status = page.locator(".turn.interrupted [data-testid=turn-status]")  # the replayed cut of the turn
        await status.wait_for(timeout=5000)
        heard = (await status.inner_text()).split("heard: “")[1].rstrip("”")
        assert heard.startswith("You said:")

        await type_and_press(page, "after the drop", "#send-text")
        await agent_said(page, "You said: after the drop. I remember 4 messages.")  # hello, its answer, the cut turn
        resumed = server.sessions[session_id]  # the page is still connected
        assert resumed.history.messages()[3] == {"role": "assistant", "content": heard}
        logged = [seq for seq, msg in resumed.log.tail()]
        last_end = max(seq for seq, msg in resumed.log.tail() if msg["type"] == "turn_end")
        handled = await page.evaluate("window.voxpipe.seqs")
        # every message of the session up to the last turn's end, handled once and in order (pongs may follow)
        assert [n for n in handled if n <= last_end] == [n for n in logged if n <= last_end]
        conn = await page.evaluate(
            "({...window.voxpipe.conn.lastResume, ignored: window.voxpipe.conn.ignored,"
            " replayed: window.voxpipe.conn.replayed})"
        )
        assert conn["askedFrom"] == max(0, conn["handledSeq"] - rewind)
        missed = [n for n in logged if conn["handledSeq"] < n < conn["readySeq"]]
        assert conn["replayed"] == len(missed) >= 1  # at least the cut turn's interrupted
        assert conn["ignored"] == len([n for n in logged if conn["askedFrom"] < n <= conn["handledSeq"]])
        assert bool(conn["ignored"]) == bool(rewind)
        turns = await page.eval_on_selector_all(".turn", "els => els.map(e => e.dataset.turn)")
        assert len(turns) == 3, turns
        assert len(set(turns)) == 3, turns  # no turn shown twice
        assert await page.locator("#errors li").count() == 0, await page.inner_text("#errors")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / f"web-client-resumed-{rewind}.png"), full_page=True)
        await disconnect(page)


async def test_the_page_starts_a_new_session_when_its_resume_is_refused(page: Any) -> None:
    async with (
        running_server(proxied_config()) as server,
        running_server(proxied_config()) as other,  # its own resume secret and store: it knows no session
        cuttable_proxy(server.port) as proxy,
    ):
        await connect_through(page, server.http_url, proxy.url())
        await type_and_press(page, "remember me", "#send-text")
        await agent_said(page, "You said: remember me. I remember 0 messages.")
        proxy.upstream_port = other.port
        assert proxy.cut() == 1
        await wait_state_label(page, "new session · msgpack")
        refused = page.locator("#errors li[data-code=resume_failed]")
        assert await refused.count() == 1
        assert "a new session started" in await refused.inner_text()
        await type_and_press(page, "who am I", "#send-text")
        await agent_said(page, "You said: who am I. I remember 0 messages.")
        assert await page.locator(".turn").count() == 2  # the old turn stays on the page; the new one is new
        assert await page.inner_text("#resume-count") == "0"
        await disconnect(page)


async def test_the_page_resumes_on_another_server_when_its_server_drains(
    page: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # two workers sharing a resume secret and a real Redis: going_away from one means "resume now, elsewhere"
    async with redis_server() as redis_url:
        monkeypatch.setenv("VOXPIPE_REDIS_URL", redis_url)
        monkeypatch.setenv("VOXPIPE_RESUME_SECRET", "s" * 32)
        shared = proxied_config(state={"backend": "redis"})
        async with running_server(shared) as old, running_server(shared) as new, cuttable_proxy(old.port) as proxy:
            await connect_through(page, old.http_url, proxy.url())
            await type_and_press(page, "remember the drain", "#send-text")
            await agent_said(page, "You said: remember the drain. I remember 0 messages.")
            proxy.upstream_port = new.port
            await old.drain(timeout_s=0)  # going_away, then close 1001
            await wait_state_label(page, "reconnected · msgpack")
            await type_and_press(page, "and now", "#send-text")
            await agent_said(page, "You said: and now. I remember 2 messages.")  # the history came from Redis
            assert len(new.sessions) == 1
            assert await page.locator("#errors li").count() == 0, await page.inner_text("#errors")  # not an error
            await disconnect(page)


async def test_the_page_keeps_trying_while_the_server_is_unreachable(page: Any) -> None:
    async with running_server(proxied_config()) as server, cuttable_proxy(server.port) as proxy:
        await connect_through(page, server.http_url, proxy.url())
        await type_and_press(page, "still there", "#send-text")
        await agent_said(page, "You said: still there. I remember 0 messages.")
        proxy.refuse = 2  # the next two attempts are reset at once: attempt 3 (after ~125-250 + 250-500 ms) gets in
        assert proxy.cut() == 1
        await wait_state_label(page, "reconnected · msgpack")
        resume = await page.evaluate("window.voxpipe.conn.lastResume")
        assert (resume["resumed"], resume["attempts"]) == (True, 3)
        assert proxy.accepted == 4
        await disconnect(page)


async def test_the_page_says_so_when_it_cannot_connect(page: Any) -> None:
    async with running_server(test_config()) as server:
        await page.goto(server.http_url)
        await page.wait_for_selector("[data-testid=stage-tts]")
        await page.fill("#server-url", "ws://127.0.0.1:9/ws")  # nothing listens there: no session to resume
        await page.click("#connect")
        await page.wait_for_selector("#conn-state[data-state=closed]")
        await page.locator("#errors li[data-code=connect]").wait_for(timeout=5000)
        assert await page.inner_text("#connect") == "Connect"  # ready to try again, not stuck "connected"
        assert await page.inner_text("#resume-count") == "0"

"""server/cli.py: ``voxpipe serve`` prints the chain and URL; SIGTERM drains and closes sessions with 1001."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

import pytest
import yaml
from websockets.exceptions import ConnectionClosed

from tests.client import Client, test_config

ROOT = Path(__file__).resolve().parents[2]


async def test_serve_prints_the_chain_and_drains_on_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(test_config()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    banner = ""
    try:
        while "WebSocket" not in banner:
            banner += (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
        assert "audio -> [vad:energy] -> speech" in banner
        url = re.search(r"ws://[^ )]+", banner)
        assert url is not None
        async with Client.connect(url.group(0)) as c:
            await c.send({"type": "say", "text": "a b c"})
            await c.recv_type("audio")
            proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed):
                while True:
                    await c.recv(10)
            kinds = [x["type"] for x in c.received]
            assert "turn_end" in kinds  # the turn in flight finished before the close
            assert c.ws.close_code == 1001
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_log_format_json_writes_one_json_object_per_line(tmp_path: Path) -> None:
    import json

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(test_config()))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "server", "serve", "--config", str(config), "--port", "0", "--log-format", "json"),
        cwd=ROOT,
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[dict[str, object]] = []
    try:
        while not any("WebSocket" in str(line.get("message", "")) for line in lines):
            lines.append(json.loads(await asyncio.wait_for(proc.stderr.readline(), 20)))
        url = re.search(r"ws://[^ )]+", str(lines[-1]["message"]))
        assert url is not None
        async with Client.connect(url.group(0)) as c:
            await c.send({"type": "text", "text": "a b c"})
            await c.turn()
            await c.send({"type": "bye"})
        proc.send_signal(signal.SIGTERM)
        rest = (await asyncio.wait_for(proc.stderr.read(), 20)).decode()
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines += [json.loads(line) for line in rest.splitlines() if line.strip()]  # every line is JSON
    events = [line for line in lines if "event" in line]
    assert [e["event"] for e in events] == ["session_start", "turn", "session_end"]
    assert {e["session"] for e in events} == {c.ready["session"]}
    assert events[1]["outcome"] == "end"
    assert events[1]["turn"] == 1
    assert all(line["level"] in ("info", "warning") and str(line["ts"]).endswith("Z") for line in lines)
    assert "a b c" not in "\n".join(map(json.dumps, lines))  # no conversation text without log_transcripts

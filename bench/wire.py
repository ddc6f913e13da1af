"""B5: loopback WebSocket round trip and throughput for 20 ms audio frames, msgpack vs JSON.

``python bench/wire.py serve voxpipe|echo`` prints ``PORT <n>`` and serves until stdin closes:
voxpipe's real server (``server.app.serve``) whose graph echoes each audio frame back as agent audio
(pacing off: ``lead_ms`` 1e9, so the wire is measured, not the playout clock), or a bare
``websockets`` echo server (the floor). ``python bench/wire.py client '{"port": n, "framing": ...}'``
measures against it and prints one ``RESULT {json}`` line.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import connect  # noqa: E402
from websockets.asyncio.server import ServerConnection  # noqa: E402
from websockets.asyncio.server import serve as ws_serve  # noqa: E402

from bench.common import RATE_HZ, args, emit, pcm_frame, percentile, raise_priority  # noqa: E402
from transports.wire import Framing, decode_server, encode_map  # noqa: E402


async def _until_stdin_closes() -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)


async def serve_voxpipe() -> None:
    from bench import vox_engines
    from server.app import serve
    from server.config import parse_config

    vox_engines.register()
    config = parse_config(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "session": {"lead_ms": 1e9},
            # the per-session flood limits would (rightly) stop a client sending audio at 100x real time
            "limits": {"messages_per_s": None, "audio_max_realtime": None},
            "pipeline": [{"name": "vad", "engine": "bench_vad"}],
        }
    )
    async with serve(config, quiet=True) as running:
        print(f"PORT {running.port}", flush=True)
        await _until_stdin_closes()


async def serve_echo() -> None:
    async def echo(ws: ServerConnection) -> None:
        async for frame in ws:
            await ws.send(frame)

    async with ws_serve(echo, "127.0.0.1", 0, compression=None, max_size=1 << 20) as server:
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        await _until_stdin_closes()


async def client(p: dict[str, Any]) -> dict[str, Any]:
    framing = Framing(p["framing"])
    rtts = int(p.get("round_trips", 2000))
    burst = int(p.get("messages", 5000))
    window = int(p.get("window", 32))
    frame = encode_map({"type": "audio", "data": pcm_frame()}, framing)
    async with connect(f"ws://127.0.0.1:{p['port']}/ws", compression=None, max_size=None) as ws:
        if p["server"] == "voxpipe":
            hello = {
                "type": "hello",
                "protocol": 1,
                "audio_in": {"format": "pcm16", "rate": RATE_HZ, "channels": 1},
                "audio_out": {"format": "pcm16", "rate": RATE_HZ},
            }
            await ws.send(encode_map(hello, framing))
            assert decode_server(await ws.recv())["type"] == "ready"

        async def round_trip() -> None:
            await ws.send(frame)
            reply = await ws.recv()
            if p["server"] == "voxpipe":
                msg = decode_server(reply)
                if msg["type"] != "audio" or len(msg["data"]) != len(pcm_frame()):
                    raise RuntimeError(f"expected the audio frame back, got {msg['type']}")

        for _ in range(200):  # warm-up
            await round_trip()
        samples: list[float] = []
        for _ in range(rtts):
            t0 = time.perf_counter()
            await round_trip()
            samples.append((time.perf_counter() - t0) * 1e6)

        room = asyncio.Semaphore(window)  # at most ``window`` frames in flight

        async def reader() -> None:
            for _ in range(burst):
                await ws.recv()
                room.release()

        reading = asyncio.create_task(reader())
        t0 = time.perf_counter()
        for _ in range(burst):
            await room.acquire()
            await ws.send(frame)
        await reading
        elapsed = time.perf_counter() - t0
    return {
        "framing": framing.value,
        "server": p["server"],
        "frame_bytes": len(frame),
        "rtt_p50_us": percentile(samples, 50),
        "rtt_p99_us": percentile(samples, 99),
        "msgs_per_s": burst / elapsed,
    }


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        raise_priority()
        asyncio.run({"voxpipe": serve_voxpipe, "echo": serve_echo}[sys.argv[2]]())
    else:
        name, params = args()
        emit({"system": params["server"], "workload": "wire", **asyncio.run(client(params))})

"""What the resilience layer costs and how fast it reacts, against the fake OpenAI service on loopback.

Prints a table and saves bench/results/upstream.json:
- time to first token, plain httpx stream vs through ``Upstream.stream`` (the layer's overhead);
- replies while one of two endpoints refuses connections (half of them fail over); a fail-fast call with
  every breaker open;
- 64 concurrent calls over 2 endpoints with ``max_concurrency: 8`` (the wait line at work).
Run: ``.venv/bin/python bench/upstream.py``
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.fakes import ask, llm, openai_fakes, reply  # noqa: E402
from vocab.errors import UpstreamError  # noqa: E402

N = 200
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "stream": True}


def ms(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_ms": round(statistics.median(values) * 1000, 2),
        "p95_ms": round(values[int(len(values) * 0.95) - 1] * 1000, 2),
    }


async def first_token_plain(url: str) -> list[float]:
    out = []
    async with httpx.AsyncClient() as client:
        for _ in range(N):
            started = time.perf_counter()
            async with client.stream("POST", url + "/v1/chat/completions", json=BODY) as response:
                async for line in response.aiter_lines():
                    if '"content": "You"' in line:
                        out.append(time.perf_counter() - started)
                        break
    return out


async def first_token_upstream(url: str) -> list[float]:
    out = []
    async with llm(url) as backend:
        for _ in range(N):
            started = time.perf_counter()
            stream = ask(backend)
            await anext(stream)
            out.append(time.perf_counter() - started)
            await stream.aclose()  # type: ignore[attr-defined]
    return out


async def main() -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with openai_fakes(2) as (a, b):
        results["first_token_plain_httpx"] = ms(await first_token_plain(a.url))
        results["first_token_upstream"] = ms(await first_token_upstream(a.url))

        async with llm(a.url, b.url, breaker_failures=10_000) as backend:
            await reply(backend)  # warm: the pooled client's first connection
            await a.down()  # refuses connections; the breaker is kept closed so every other call fails over
            times = []
            for _ in range(40):
                started = time.perf_counter()
                await reply(backend)
                times.append(time.perf_counter() - started)
            results["reply_with_one_of_two_refusing"] = {**ms(times), "max_ms": round(max(times) * 1000, 2)}
        async with llm(a.url, b.url, breaker_failures=1) as backend:
            await b.down()
            for _ in range(2):
                with contextlib.suppress(UpstreamError):
                    await reply(backend)
            started = time.perf_counter()
            with contextlib.suppress(UpstreamError):
                await reply(backend)
            results["all_open_fail_fast_ms"] = round((time.perf_counter() - started) * 1000, 3)
            await a.up()
            await b.up()

        async with llm(a.url, b.url, max_concurrency=8, max_waiting=64) as backend:
            a.default = b.default = "slow"
            a.drip_s = b.drip_s = 0.005
            before = [len(a.requests), len(b.requests)]
            started = time.perf_counter()
            texts = await asyncio.gather(*(reply(backend) for _ in range(64)))
            results["concurrent_64_calls_cap_8x2"] = {
                "wall_s": round(time.perf_counter() - started, 3),
                "all_whole": all(t == "You said: hello there" for t in texts),
                "per_endpoint": [len(a.requests) - before[0], len(b.requests) - before[1]],
            }
    return results


if __name__ == "__main__":
    res = asyncio.run(main())
    print(f"{'measure':40} value")
    for key, value in res.items():
        print(f"{key:40} {value}")
    out = ROOT / "bench" / "results" / "upstream.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"saved {out.relative_to(ROOT)}")

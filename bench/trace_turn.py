"""A picture of one turn's trace: the real server on the real ``config.yaml`` with traces into the SDK's
in-memory exporter, two spoken turns (one answered, one cut off by a barge-in), their spans rendered as
an HTML timeline and screenshotted with the system Chromium through Playwright.

    .venv/bin/python bench/trace_turn.py [--png docs/trace.png] [--html test-artifacts/trace.html]

Writes the PNG, the HTML, and the spans as JSON (``bench/results/trace-<date>.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stages.resample import resample  # noqa: E402
from tests.client import Client, running_server, silence  # noqa: E402

COLORS = {
    "turn": "#5b6b82",
    "vad": "#4f8fc0",
    "asr": "#3aa0a0",
    "llm": "#4caf50",
    "tts": "#f39c33",
    "upstream": "#9b59b6",
}
SERVER_SPANS = {"vad.endpoint": "vad", "asr.final": "asr", "audio.first_sent": "turn", "turn.end": "turn"}


def span_rows(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Spans in tree order (children after their parent, by start time), with their depth."""
    by_parent: dict[str | None, list[dict[str, Any]]] = {}
    ids = {s["id"] for s in spans}
    for span in spans:
        parent = span["parent"] if span["parent"] in ids else None
        by_parent.setdefault(parent, []).append(span)
    rows: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(by_parent.get(parent, []), key=lambda s: (s["start_ns"], s["name"])):
            rows.append((depth, span))
            walk(span["id"], depth + 1)

    walk(None, 0)
    return rows


def label(span: dict[str, Any]) -> str:
    a = span["attributes"]
    parts = []
    if "stage" in a and "engine" in a:
        parts.append(f"{a['stage']}:{a['engine']}")
    for key, unit in (("chars", " chars"), ("audio_ms", " ms audio"), ("deltas", " deltas"), ("endpoint", "")):
        if key in a:
            parts.append(f"{a[key]}{unit}")
    if span["name"] == "turn" and "voice_to_voice_ms" in a:
        parts.append(f"voice-to-voice {a['voice_to_voice_ms']:.0f} ms")
    if "cause" in a:
        parts.append(f"cause {a['cause']}")
    if a.get("outcome") not in (None, "ok"):
        parts.append(str(a["outcome"]))
    return " · ".join(parts)


def color(name: str) -> str:
    kind = SERVER_SPANS.get(name) or name.split(".")[0]
    return COLORS.get(kind, "#888")


def render_html(traces: list[tuple[str, list[dict[str, Any]]]]) -> str:
    """One timeline per trace: a row per span, its bar placed on the turn's own time axis."""
    sections = []
    for title, spans in traces:
        root = min(spans, key=lambda s: s["start_ns"])
        t0, t1 = root["start_ns"], max(s["end_ns"] for s in spans)
        total = max(t1 - t0, 1)
        rows = []
        for depth, span in span_rows(spans):
            left = (span["start_ns"] - t0) / total * 100
            width = max((span["end_ns"] - span["start_ns"]) / total * 100, 0.25)
            ms = (span["end_ns"] - span["start_ns"]) / 1e6
            cut = span["attributes"].get("outcome") == "cancelled"
            style = f"left:{left:.3f}%;width:{width:.3f}%;background:{color(span['name'])}"
            rows.append(
                f'<div class="row"><div class="name" style="padding-left:{depth * 14 + 6}px">'
                f'{html.escape(span["name"])}</div><div class="lane">'
                f'<div class="bar{" cut" if cut else ""}" style="{style}"></div>'
                f'<span class="ms" style="left:calc({left + width:.3f}% + 6px)">{ms:.1f} ms'
                f'<em>{html.escape(label(span))}</em></span></div></div>'
            )
        step_ms = 250 if total / 1e6 <= 4000 else 500
        ticks = "".join(
            f'<div class="tick" style="left:{t / (total / 1e6) * 100:.3f}%">{t} ms</div>'
            for t in range(0, int(total / 1e6) + 1, step_ms)
        )
        sections.append(
            f'<h2>{html.escape(title)}</h2><div class="row axis"><div class="name"></div><div class="lane">{ticks}'
            f"</div></div>{''.join(rows)}"
        )
    return f"""<!doctype html><meta charset="utf-8"><title>voxpipe: one turn's trace</title>
<style>
body {{ font: 13px/1.3 system-ui, sans-serif; margin: 18px 24px; color: #222; background: #fff; width: 1400px; }}
h1 {{ font-size: 18px; margin: 0 0 4px; }} h2 {{ font-size: 14px; margin: 18px 0 6px; }}
p {{ margin: 0 0 8px; color: #555; }}
.row {{ display: flex; height: 22px; align-items: center; border-bottom: 1px solid #f0f0f0; }}
.name {{ width: 210px; flex: none; font-family: ui-monospace, monospace; font-size: 12px; white-space: nowrap; }}
.lane {{ position: relative; flex: 1; height: 100%; margin-right: 330px; }}
.bar {{ position: absolute; top: 4px; height: 14px; border-radius: 2px; }}
.bar.cut {{ outline: 1.5px solid #c0392b;
  background-image: repeating-linear-gradient(45deg, transparent 0 4px, rgba(255,255,255,.55) 4px 8px) !important; }}
.ms {{ position: absolute; top: 3px; white-space: nowrap; font-size: 12px; }}
.ms em {{ color: #777; font-style: normal; margin-left: 8px; }}
.axis {{ height: 18px; border-bottom: 1px solid #ccc; }}
.tick {{ position: absolute; top: 2px; white-space: nowrap; font-size: 11px; color: #999;
  border-left: 1px solid #ccc; padding-left: 3px; }}
</style>
<h1>voxpipe: the trace of a turn (OpenTelemetry spans from the in-memory exporter)</h1>
<p>Embedded stack (webrtcvad, whisper tiny.en, llama.cpp SmolLM2-135M, Piper) on 2 CPU cores. Bars on the turn's time
axis; hatched red: ended <b>cancelled</b> at the cut.</p>
{"".join(sections)}
"""


def as_dicts(spans: list[Any]) -> list[dict[str, Any]]:
    out = []
    for s in spans:
        out.append(
            {
                "name": s.name,
                "trace": format(s.context.trace_id, "032x"),
                "id": format(s.context.span_id, "016x"),
                "parent": format(s.parent.span_id, "016x") if s.parent is not None else None,
                "start_ns": s.start_time,
                "end_ns": s.end_time,
                "attributes": {k.removeprefix("voxpipe."): v for k, v in (s.attributes or {}).items()},
            }
        )
    return out


async def record(config: dict[str, Any]) -> list[dict[str, Any]]:
    async with running_server(config) as srv:
        piper = next(spec.factory.backend for spec in srv.specs if spec.engine_name == "piper")

        def speak(text: str) -> bytes:
            return resample(piper.synthesize_all(text), piper.rate_hz, 16000)

        async with Client.connect(srv.url) as c:
            # the microphone stays open after each question, as a real one does (the VAD may wait for more words)
            await c.stream_audio(silence(300) + speak("What is the capital of France?") + silence(1500), realtime=1.0)
            await c.turn(timeout=60)
            await c.stream_audio(silence(300) + speak("Tell me a story about a dragon.") + silence(1000), realtime=1.0)
            first = await c.recv_type("audio", timeout=60)
            await c.stream_audio(speak("Wait, stop.") + silence(1500), realtime=1.0)  # barge-in over the agent's reply
            await c.recv_until(lambda m: m["type"] == "interrupted" and m["turn"] == first["turn"], timeout=30)
            await c.recv_type("turn_end", timeout=60)  # the barge-in's own turn
        return as_dicts(list(srv.tracer.memory.get_finished_spans()))


async def screenshot(page_url: str, png_path: Path) -> None:
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium binary (apt-get install chromium)")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1450, "height": 600}, device_scale_factor=1)
            await page.goto(page_url)
            await page.screenshot(path=str(png_path), full_page=True)
        finally:
            await browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "config.yaml"))
    parser.add_argument("--png", default=str(ROOT / "docs" / "trace.png"))
    parser.add_argument("--html", default=str(ROOT / "test-artifacts" / "trace.html"))
    args = parser.parse_args()
    config: dict[str, Any] = yaml.safe_load(Path(args.config).read_text())
    config.setdefault("server", {})["port"] = 0
    config["telemetry"] = {"traces": True, "exporter": "memory"}
    spans = asyncio.run(record(config))
    traces: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        traces.setdefault(span["trace"], []).append(span)
    ordered = sorted(traces.values(), key=lambda t: min(s["start_ns"] for s in t))
    titled = []
    for spans_of_turn in ordered[:2]:
        root = next(s for s in spans_of_turn if s["name"] == "turn")
        outcome = root["attributes"].get("turn_outcome")
        titled.append((f"turn {root['attributes']['turn']}: {outcome}", spans_of_turn))
    html_path, png_path = Path(args.html), Path(args.png)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(render_html(titled))
    asyncio.run(screenshot(html_path.resolve().as_uri(), png_path))
    out = ROOT / "bench" / "results" / f"trace-{datetime.now():%Y-%m-%d-%H%M}.json"
    out.write_text(json.dumps(spans, indent=1))
    for title, turn_spans in titled:
        print(title)
        for depth, span in span_rows(turn_spans):
            ms = (span["end_ns"] - span["start_ns"]) / 1e6
            print(f"  {'  ' * depth}{span['name']:<22} {ms:8.1f} ms  {label(span)}")
    print(f"bench: wrote {png_path}, {html_path} and {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

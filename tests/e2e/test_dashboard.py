"""deploy/grafana/voxpipe.json queries only what the server exports: every metric name in every panel's
PromQL is in ``GET /metrics`` of a real server after real turns (a spoken one, an interrupted one, one
through an upstream backend), and every label a query groups or filters by is on that metric's samples
(or is one Prometheus adds at scrape: ``instance``, ``job``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.client import Client, running_server, silence, test_config, tone
from tests.fakes.services import FakeOpenAi
from vocab.metrics import STAGE_FIRST_OUTPUT, VOICE_TO_VOICE

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "voxpipe.json"
SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus to every series it scrapes
METRIC = re.compile(r"\bvoxpipe_[a-z0-9_]+\b")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
MATCHER = re.compile(r"\{([^}]*)\}")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(dashboard["panels"]) for t in p.get("targets", [])]


def exported(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """``# TYPE`` name -> kind, and sample name -> the label names seen on its samples."""
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, f"not a Prometheus sample line: {line!r}"
            names = {pair.split("=", 1)[0] for pair in re.findall(r'[a-z_]+="(?:[^"\\]|\\.)*"', match.group(2) or "")}
            labels.setdefault(match.group(1), set()).update(names)
    return types, labels


def family(name: str, types: dict[str, str]) -> str | None:
    """The exported metric ``name`` belongs to (a histogram's ``_bucket``/``_sum``/``_count`` series too)."""
    if name in types:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    return None


async def metrics_after_real_turns() -> str:
    async with FakeOpenAi() as fake:
        config = test_config()
        dead = "http://127.0.0.1:9"  # connect refused: a failure by endpoint and code, then the retry works
        endpoints = [{"url": dead}, {"url": fake.url}]
        llm = {"name": "llm", "engine": "openai", "model": "m", "endpoints": endpoints, "backoff_ms": 1}
        config["pipeline"][2] = llm
        async with running_server(config) as srv:
            async with Client.connect(srv.url, send_hello=False) as refused:
                await refused.send({"type": "text", "text": "no hello first"})  # fatal error, close 1002
                assert (await refused.recv_type("error"))["fatal"] is True
                await refused.ws.wait_closed()
            async with Client.connect(srv.url) as c:
                await c.stream_audio(silence(100) + tone(600) + silence(1500), realtime=1.0)
                assert (await c.turn())[-1]["type"] == "turn_end"
                await c.send({"type": "text", "text": "tell me a long story"})
                await c.recv_type("audio")
                await c.send({"type": "interrupt"})
                await c.recv_type("interrupted")
                await c.send({"type": "commit_nothing"})  # an unknown message: an error, by code
                await c.recv_type("error")
            async with httpx.AsyncClient() as http:
                response = await http.get(f"{srv.http_url}metrics")
            assert response.status_code == 200
            return response.text


async def test_every_metric_the_dashboard_queries_is_exported_with_its_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    before = {stage: STAGE_FIRST_OUTPUT.count(kind=stage, stage=stage) for stage in ("vad", "asr", "llm", "tts")}
    before["v2v"] = VOICE_TO_VOICE.count()
    text = await metrics_after_real_turns()
    types, sample_labels = exported(text)
    checked: set[tuple[str, str]] = set()  # (metric family, label) pairs confirmed on real samples
    unchecked: set[str] = set()  # metrics with no labelled sample after these turns (a counter still at 0)
    for title, expr in queries(dashboard):
        names = set(METRIC.findall(expr))
        assert names, f"{title}: no voxpipe metric in {expr!r}"
        for name in names:
            assert family(name, types) is not None, f"{title}: {name} is not exported by the server"
        used = {label.strip() for group in BY.findall(expr) for label in group.split(",") if label.strip()}
        used |= {m.split("=")[0].strip() for group in MATCHER.findall(expr) for m in group.split(",") if m.strip()}
        used -= SCRAPE_LABELS
        for name in names:
            seen = sample_labels.get(name, set())
            if not seen and used - {"le"}:
                unchecked.add(name)
                continue
            for label in used:
                assert label in seen, f"{title}: {label!r} is not a label of {name} (it has {sorted(seen)})"
                checked.add((name, label))
    print(f"labels checked on samples: {sorted(checked)}; not checkable (no samples): {sorted(unchecked)}")
    assert len(checked) >= 15
    # the histograms the latency panels need got these turns' observations (metrics are process-wide:
    # other tests in this process may have added theirs before)
    assert count_in(text, "voxpipe_voice_to_voice_seconds_count") == before["v2v"] + 1
    for stage in ("vad", "asr", "llm", "tts"):
        series = f'voxpipe_stage_first_output_seconds_count{{kind="{stage}",stage="{stage}"}}'
        assert count_in(text, series) >= before[stage] + 1
    assert count_in(text, "voxpipe_event_loop_lag_seconds_count") >= 1


def count_in(text: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert found, f"{series} is not in GET /metrics"
    return float(found.group(1))


def test_the_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "voxpipe"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance"}
    ids = [p["id"] for p in panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard["panels"]):
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            assert '{instance=~"$instance"}' in target["expr"]  # the worker picker applies to every query

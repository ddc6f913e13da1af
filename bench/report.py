"""Turns ``run_all``'s raw results into medians, ratios and the markdown table (stdlib only)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, percentile

Row = dict[str, Any]
NA = float("nan")


def _med(raw: dict[str, Any], workload: str, system: str, key: str) -> float:
    values = [r[key] for r in raw.get(workload, {}).get(system, []) if "error" not in r and key in r]
    return median(values) if values else NA


def _pooled(raw: dict[str, Any], system: str, q: float) -> float:
    samples = [s for r in raw.get("b4", {}).get(system, []) if "error" not in r for s in r["samples_ms"]]
    return percentile(samples, q)


def _stale(raw: dict[str, Any], system: str) -> float:
    runs = [r for r in raw.get("b4", {}).get(system, []) if "error" not in r]
    return float(sum(r["stale_chunks"] for r in runs)) if runs else NA


def _count(raw: dict[str, Any], system: str) -> int:
    return sum(r["interrupts"] for r in raw.get("b4", {}).get(system, []) if "error" not in r)


def summarize(data: dict[str, Any]) -> list[Row]:
    """One row per figure: values for voxpipe / pipecat lean / pipecat default / floor, ratio, target."""
    raw = data["raw"]
    rows: list[Row] = []

    def row(
        name: str,
        unit: str,
        get: Callable[[str], float],
        *,
        lower_is_better: bool,
        target: str = "",
        ok: Callable[[float], bool] | None = None,
        floor: float = NA,
    ) -> None:
        vox, lean, default = get("voxpipe"), get("pipecat-lean"), get("pipecat-default")
        ratio = NA
        if vox == vox and lean == lean and vox > 0 and lean > 0:
            ratio = lean / vox if lower_is_better else vox / lean
        met = "" if ok is None or vox != vox else ("yes" if ok(vox) else "no")
        rows.append(
            {
                "name": name,
                "unit": unit,
                "voxpipe": vox,
                "pipecat_lean": lean,
                "pipecat_default": default,
                "floor": floor,
                "ratio": ratio,
                "target": target,
                "met": met,
            }
        )

    row(
        "B1 per-hop overhead",
        "µs/hop",
        lambda s: _med(raw, "b1", s, "us_per_hop"),
        lower_is_better=True,
        target="≤ 5",
        ok=lambda v: v <= 5,
        floor=_med(raw, "b1", "floor", "us_per_hop"),
    )
    row(
        "B2 real-time sessions on one core",
        "sessions",
        lambda s: _med(raw, "b2", s, "k"),
        lower_is_better=False,
        target="≥ 400",
        ok=lambda v: v >= 400,
    )
    row(
        "B3 memory per idle session (RSS)",
        "KiB",
        lambda s: _med(raw, "b3", s, "rss_idle_kib"),
        lower_is_better=True,
        target="≤ 60",
        ok=lambda v: v <= 60,
    )
    row(
        "B3 memory per idle session (tracemalloc)",
        "KiB",
        lambda s: _med(raw, "b3", s, "traced_idle_kib"),
        lower_is_better=True,
    )
    row(
        "B3 memory per active session (RSS)",
        "KiB",
        lambda s: _med(raw, "b3", s, "rss_active_kib"),
        lower_is_better=True,
    )
    row(
        "B3 memory per active session (tracemalloc)",
        "KiB",
        lambda s: _med(raw, "b3", s, "traced_active_kib"),
        lower_is_better=True,
    )
    row("B4 interrupt propagation p50", "ms", lambda s: _pooled(raw, s, 50), lower_is_better=True)
    row(
        "B4 interrupt propagation p99",
        "ms",
        lambda s: _pooled(raw, s, 99),
        lower_is_better=True,
        target="< 0.5",
        ok=lambda v: v < 0.5,
    )
    row(
        "B4 stale chunks after interrupt",
        "chunks",
        lambda s: _stale(raw, s),
        lower_is_better=True,
        target="0",
        ok=lambda v: v == 0,
    )
    for framing in ("msgpack", "json"):
        for key, label, unit in (
            ("rtt_p50_us", "round trip p50", "µs"),
            ("rtt_p99_us", "round trip p99", "µs"),
            ("msgs_per_s", "throughput", "msg/s"),
        ):
            vox = _med(raw, "b5", f"voxpipe-{framing}", key)
            floor = _med(raw, "b5", f"echo-{framing}", key)
            ratio = (
                NA
                if not (vox == vox and floor == floor and vox > 0)
                else (floor / vox if key == "msgs_per_s" else vox / floor)
            )
            rows.append(
                {
                    "name": f"B5 wire {framing} {label}",
                    "unit": unit,
                    "voxpipe": vox,
                    "pipecat_lean": NA,
                    "pipecat_default": NA,
                    "floor": floor,
                    "ratio": ratio,
                    "ratio_vs": "floor",
                    "target": "",
                    "met": "",
                }
            )
    data["b4_interrupts"] = {s: _count(raw, s) for s in ("voxpipe", "pipecat-lean", "pipecat-default")}
    return rows


def _fmt(value: float) -> str:
    if value != value:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if value else "0"


def markdown(data: dict[str, Any]) -> str:
    rows = summarize(data)
    meta = data["meta"]
    lines = [
        "| figure | unit | voxpipe | pipecat lean | pipecat default | bare floor | ratio | target | met |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        ratio = (
            "—"
            if r["ratio"] != r["ratio"]
            else f"{r['ratio']:.1f}x" + (" of floor" if r.get("ratio_vs") == "floor" else "")
        )
        lines.append(
            f"| {r['name']} | {r['unit']} | {_fmt(r['voxpipe'])} | {_fmt(r['pipecat_lean'])} | "
            f"{_fmt(r['pipecat_default'])} | {_fmt(r['floor'])} | {ratio} | {r['target']} | {r['met']} |"
        )
    per_round = {
        s: "/".join(str(r["k"]) for r in data["raw"].get("b2", {}).get(s, []))
        for s in ("voxpipe", "pipecat-lean", "pipecat-default")
    }
    n = data.get("b4_interrupts", {})
    lines += [
        "",
        "ratio: how many times better voxpipe is than pipecat lean (B1-B4); for B5, voxpipe's cost over the bare",
        "websockets echo floor (round trips: voxpipe ÷ floor; throughput: floor ÷ voxpipe).",
        f"Medians of {meta['rounds']} interleaved rounds, each run in a fresh process pinned to one core; B4 pools "
        f"{n.get('voxpipe', 0)} / {n.get('pipecat-lean', 0)} / {n.get('pipecat-default', 0)} interrupts "
        "(voxpipe / lean / default) over the rounds. B2 per round: "
        + "; ".join(f"{s} {v}" for s, v in per_round.items() if v)
        + ".",
        f"pipecat-ai {meta['pipecat']}, Python {meta['python']}, {meta['machine']}; load average before/after "
        f"{meta['load_avg_before'][0]:.1f} / {meta['load_avg_after'][0]:.1f} ({meta['shared_machine']}).",
        f"Run took {meta['elapsed_s'] / 60:.1f} min.",
    ]
    return "\n".join(lines)


def write_markdown(data: dict[str, Any], path: Path) -> str:
    text = markdown(data)
    path.write_text(text + "\n")
    return text


if __name__ == "__main__":  # re-render a result's table: python bench/report.py bench/results/<date>.json
    import json

    source = Path(sys.argv[1])
    print(write_markdown(json.loads(source.read_text()), source.with_suffix(".md")))

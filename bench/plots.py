"""PNG plots of one ``bench/results/*.json`` (runs in bench/.venv-pipecat, which has matplotlib).

python bench/plots.py bench/results/<date>.json   # prints the PNG paths
python bench/plots.py --capacity OUT.png capacity-A.json capacity-B.json   # client p90 vs K, one line each
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import summarize  # noqa: E402

SYSTEMS = ["voxpipe", "pipecat-lean", "pipecat-default"]
COLORS = {
    "voxpipe": "#1b7f5a",
    "pipecat": "#3b6fb6",
    "pipecat-lean": "#3b6fb6",
    "pipecat-default": "#9aa9c9",
    "floor": "#999999",
}


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str], unit: str) -> None:
    bars = ax.bar(labels, values, color=colors)
    for bar, value in zip(bars, values, strict=True):
        if value == value:
            ax.annotate(
                f"{value:.3g}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=9,
            )
    ax.set_ylabel(unit)


def main(path: Path) -> None:
    data = json.loads(path.read_text())
    raw = data["raw"]
    rows = {r["name"]: r for r in summarize(data)}
    stem = path.with_suffix("")
    written: list[Path] = []

    def save(fig: Any, name: str) -> None:
        out = Path(f"{stem}-{name}.png")
        fig.tight_layout()
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)

    if "b1" in raw:
        r = rows["B1 per-hop overhead"]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        _bars(
            ax,
            ["voxpipe", "pipecat lean", "pipecat default", "bare asyncio"],
            [r["voxpipe"], r["pipecat_lean"], r["pipecat_default"], r["floor"]],
            [COLORS[s] for s in (*SYSTEMS, "floor")],
            "µs per frame per hop",
        )
        ax.set_title("B1: 4 pass-through stages (lower is better)")
        save(fig, "b1")

    if "b2" in raw:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
        for system in SYSTEMS:
            pts = [p for run in raw["b2"].get(system, []) for p in run["points"] if "error" not in p]
            pts.sort(key=lambda p: p["k"])
            ax1.plot([p["k"] for p in pts], [p["p99_ms"] for p in pts], "o", color=COLORS[system], label=system)
            ax2.plot([p["k"] for p in pts], [100 * p["cpu_frac"] for p in pts], "o", color=COLORS[system], label=system)
        ax1.axhline(20, color="red", lw=0.8, ls="--")
        ax1.set_yscale("log")
        ax1.set_xscale("log")
        ax1.set_xlabel("sessions (K) on one core")
        ax1.set_ylabel("p99 tick lateness (ms)")
        ax2.axhline(80, color="red", lw=0.8, ls="--")
        ax2.set_xscale("log")
        ax2.set_xlabel("sessions (K) on one core")
        ax2.set_ylabel("CPU of one core (%)")
        ax1.legend(fontsize=8)
        fig.suptitle("B2: real-time sessions (20 ms frames) per core; pass = p99 < 20 ms and CPU ≤ 80 %")
        save(fig, "b2")

    if "b3" in raw:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        width = 0.2
        keys = [
            ("B3 memory per idle session (RSS)", "idle RSS"),
            ("B3 memory per idle session (tracemalloc)", "idle traced"),
            ("B3 memory per active session (RSS)", "active RSS"),
            ("B3 memory per active session (tracemalloc)", "active traced"),
        ]
        for i, system in enumerate(SYSTEMS):
            col = {"voxpipe": "voxpipe", "pipecat-lean": "pipecat_lean", "pipecat-default": "pipecat_default"}[system]
            xs = [j + (i - 1) * width for j in range(len(keys))]
            ax.bar(xs, [rows[k][col] for k, _ in keys], width, color=COLORS[system], label=system)
        ax.set_xticks(range(len(keys)), [label for _, label in keys])
        ax.axhline(60, color="red", lw=0.8, ls="--")
        ax.set_ylabel("KiB per session (K=200)")
        ax.set_title("B3: memory per session (lower is better)")
        ax.legend(fontsize=8)
        save(fig, "b3")

    if "b4" in raw:
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for system in SYSTEMS:
            samples = sorted(s for run in raw["b4"].get(system, []) if "error" not in run for s in run["samples_ms"])
            if samples:
                ys = [(i + 1) / len(samples) for i in range(len(samples))]
                ax.plot(samples, ys, color=COLORS[system], label=system)
        ax.axvline(0.5, color="red", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("interrupt -> output stopped (ms)")
        ax.set_ylabel("fraction of interrupts")
        ax.set_title("B4: interruption propagation (CDF)")
        ax.legend(fontsize=8)
        save(fig, "b4")

    if "b5" in raw:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        labels, p50, p99, rate = [], [], [], []
        for framing in ("msgpack", "json"):
            for server, name in (("voxpipe", "voxpipe"), ("echo", "bare echo")):
                runs = [r for r in raw["b5"].get(f"{server}-{framing}", []) if "error" not in r]
                if not runs:
                    continue
                labels.append(f"{name}\n{framing}")
                p50.append(sorted(r["rtt_p50_us"] for r in runs)[len(runs) // 2])
                p99.append(sorted(r["rtt_p99_us"] for r in runs)[len(runs) // 2])
                rate.append(sorted(r["msgs_per_s"] for r in runs)[len(runs) // 2])
        xs = range(len(labels))
        ax1.bar([x - 0.2 for x in xs], p50, 0.4, label="p50", color="#1b7f5a")
        ax1.bar([x + 0.2 for x in xs], p99, 0.4, label="p99", color="#9ccfb8")
        ax1.set_xticks(list(xs), labels, fontsize=8)
        ax1.set_ylabel("round trip (µs)")
        ax1.legend(fontsize=8)
        _bars(ax2, labels, rate, ["#1b7f5a", "#999999"] * 2, "messages per second")
        ax2.tick_params(axis="x", labelsize=8)
        fig.suptitle("B5: loopback WebSocket, 20 ms PCM16 frames at 16 kHz")
        save(fig, "b5")

    print(" ".join(str(p.relative_to(ROOT)) for p in written))


def capacity_plot(out: Path, paths: list[Path]) -> None:
    """Client voice-to-voice p90 (solid) and median (dotted) against K, one colour per ``bench/capacity.py``
    result (its ``system``, voxpipe when absent)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for path in paths:
        data = json.loads(path.read_text())
        system = data.get("system", "voxpipe")
        color = COLORS.get(system, COLORS["pipecat-lean"])
        rows = [r for r in data["rows"] if r["client_v2v_ms"]]
        ks = [r["k"] for r in rows]
        p90 = [r["client_v2v_ms"]["p90"] for r in rows]
        ax.plot(ks, p90, "o-", color=color, label=f"{system} p90")
        ax.plot(ks, [r["client_v2v_ms"]["median"] for r in rows], "o:", color=color, label=f"{system} median")
        for k, value, r in zip(ks, p90, rows, strict=True):
            ax.annotate(f"{value:.0f}\n{r['exact']}/{r['turns']}", (k, value), fontsize=7, ha="center", va="bottom")
    ax.axhline(1500, color="#999999", linestyle="--", linewidth=1, label="target p90 (K >= 6)")
    ax.set_xlabel("people talking at once (K)")
    ax.set_ylabel("client voice-to-voice (ms)")
    ax.set_title("Same models, clips and client: voxpipe vs pipecat 1.14", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(out)


if __name__ == "__main__":
    if sys.argv[1] == "--capacity":
        capacity_plot(Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
    else:
        main(Path(sys.argv[1]).resolve())

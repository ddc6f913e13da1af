// A small latency chart on a canvas: one column per turn (the last `maxTurns`), a dot per stage at
// its time to first output, and a bar for voice-to-voice when the turn began from speech.

const PALETTE = ["#7c8db5", "#5aa08f", "#c79a4b", "#b56f8d", "#6f9fc7", "#9a7cc7"];

export class LatencyChart {
  constructor(canvas, { maxTurns = 20 } = {}) {
    this.canvas = canvas;
    this.maxTurns = maxTurns;
    this.rows = [];
    this.stages = [];
    this.draw();
  }

  setStages(names) {
    this.stages = names.slice();
    this.draw();
  }

  add(row) {
    for (const name of Object.keys(row.first)) if (!this.stages.includes(name)) this.stages.push(name);
    this.rows.push(row);
    if (this.rows.length > this.maxTurns) this.rows.shift();
    this.draw();
  }

  clear() {
    this.rows = [];
    this.draw();
  }

  draw() {
    const canvas = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const cssWidth = canvas.clientWidth || canvas.width;
    const cssHeight = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(cssWidth * ratio)) {
      canvas.width = Math.round(cssWidth * ratio);
      canvas.height = Math.round(cssHeight * ratio);
    }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, cssWidth, cssHeight);
    g.font = "11px system-ui, sans-serif";
    const left = 40, right = 8, top = 22, bottom = 18;
    const plotW = cssWidth - left - right, plotH = cssHeight - top - bottom;

    // legend
    let x = left;
    const legend = [...this.stages.map((s, i) => [s, PALETTE[i % PALETTE.length]]), ["voice→voice", "#2f3a4f"]];
    for (const [name, color] of legend) {
      g.fillStyle = color;
      g.fillRect(x, 6, 9, 9);
      g.fillStyle = "#5b6474";
      g.fillText(name, x + 12, 14);
      x += g.measureText(name).width + 26;
    }

    const values = this.rows.flatMap((r) => [...Object.values(r.first), r.v2v ?? 0]);
    const maxMs = niceCeil(Math.max(100, ...values));
    g.strokeStyle = "#e3e6ec";
    g.fillStyle = "#8a93a3";
    g.lineWidth = 1;
    for (let k = 0; k <= 4; k++) {
      const y = top + plotH - (plotH * k) / 4;
      g.beginPath();
      g.moveTo(left, y + 0.5);
      g.lineTo(left + plotW, y + 0.5);
      g.stroke();
      g.fillText(String(Math.round((maxMs * k) / 4)), 4, y + 4);
    }
    if (!this.rows.length) {
      g.fillText("no turns yet", left + plotW / 2 - 30, top + plotH / 2);
      return;
    }
    const colW = plotW / this.maxTurns;
    const yOf = (ms) => top + plotH - (plotH * Math.min(ms, maxMs)) / maxMs;
    this.rows.forEach((row, i) => {
      const cx = left + colW * (i + 0.5);
      if (row.v2v != null) {
        g.fillStyle = "rgba(47, 58, 79, 0.8)";
        const y = yOf(row.v2v);
        g.fillRect(cx - colW * 0.18, y, colW * 0.36, top + plotH - y);
      }
      this.stages.forEach((name, s) => {
        const ms = row.first[name];
        if (ms == null) return;
        g.fillStyle = PALETTE[s % PALETTE.length];
        g.beginPath();
        g.arc(cx, yOf(ms), 3.2, 0, Math.PI * 2);
        g.fill();
      });
      g.fillStyle = "#8a93a3";
      g.fillText(String(row.turn), cx - 4, cssHeight - 4);
    });
  }
}

function niceCeil(ms) {
  const steps = [100, 200, 250, 500, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 60000];
  return steps.find((s) => s >= ms) ?? ms;
}

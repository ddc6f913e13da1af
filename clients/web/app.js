// The voxpipe demo page: connects, streams the mic, plays the agent, and shows the conversation,
// per-turn latency and errors. No framework, no build step; the ids / data-testid are stable for tests.

import { Mic, Player } from "./audio.js";
import { LatencyChart } from "./chart.js";
import { Connection } from "./protocol.js";
import { RtcAudio } from "./rtc.js";

const MIC_RATE_HZ = 16000; // declared in hello.audio_in
const OUT_RATE_HZ = { websocket: 24000, webrtc: 48000 }; // hello.audio_out; Opus runs at 48 kHz
const AUDIBLE_RMS = 0.01; // about -40 dBFS: counts as "agent audio heard" on the WebRTC path

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("conn-state"), url: $("server-url"), json: $("json-framing"), stages: $("stages"),
  stagesNote: $("stages-note"), connect: $("connect"), mic: $("mic"), interrupt: $("interrupt"),
  micLevel: $("mic-level"), agentLevel: $("agent-level"), played: $("played-ms"), sent: $("sent-ms"),
  turnCount: $("turn-count"), resumes: $("resume-count"), rtcState: $("rtc-state"), rtt: $("rtt-ms"), errors: $("errors"),
  conversation: $("conversation"), hint: $("hint"), form: $("text-form"), text: $("text-input"),
  send: $("send-text"), say: $("say-text"), chart: $("latency-chart"), table: $("metrics-table"),
  remote: $("remote-audio"),
};

const app = {
  conn: null,
  path: "websocket",
  graph: [],
  turns: new Map(), // turn id -> {el, user, agent, status}
  pending: [], // views of typed inputs waiting for their turn id
  log: [],
  seqs: [], // session_seq of the messages handled that a resume could replay, in order (tests compare them with the server's log)
  playedByTurn: new Map(),
  rtcHeardMs: 0,
  sentMs: 0,
  mic: null,
  rtc: null,
  pingTimer: null,
};
window.voxpipe = app; // for debugging in the console

const chart = new LatencyChart(ui.chart);
const player = new Player({
  onPlayed(turn, ms) {
    app.playedByTurn.set(turn, Math.max(ms, app.playedByTurn.get(turn) || 0));
    app.conn?.send({ type: "played", turn, ms: Math.round(ms) });
    showPlayed();
  },
  onLevel: (rms) => setLevel(ui.agentLevel, rms),
});

// ------------------------------------------------------------------ small view helpers

function setState(state, label = state) {
  ui.state.dataset.state = state;
  ui.state.textContent = label;
}

function setLevel(el, rms) {
  const db = rms > 0 ? 20 * Math.log10(rms) : -100;
  el.style.width = `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
}

function showPlayed() {
  let total = app.rtcHeardMs;
  for (const ms of app.playedByTurn.values()) total += ms;
  ui.played.textContent = String(Math.round(total));
}

function showError(code, message, fatal = false) {
  const li = document.createElement("li");
  li.dataset.code = code;
  li.className = fatal ? "fatal" : "";
  const b = document.createElement("b");
  b.textContent = code;
  li.append(b, ` ${message}`);
  ui.errors.prepend(li);
  while (ui.errors.children.length > 8) ui.errors.lastChild.remove();
}

function setConnected(on) {
  ui.connect.textContent = on ? "Disconnect" : "Connect";
  ui.connect.classList.toggle("primary", !on);
  for (const el of [ui.mic, ui.interrupt, ui.send, ui.say]) el.disabled = !on;
  for (const el of [ui.url, ui.json, ...document.querySelectorAll("input[name=audio-path]")]) el.disabled = on;
  ui.stagesNote.textContent = on ? "(changes apply when you reconnect)" : "";
}

function renderStages(graph) {
  const checked = new Set(selectedStages() ?? graph.map((s) => s.name));
  const known = new Set([...ui.stages.querySelectorAll("input")].map((i) => i.value));
  const same = graph.length === known.size && graph.every((s) => known.has(s.name));
  app.graph = graph;
  chart.setStages(graph.map((s) => s.name));
  renderMetricsHead();
  if (same) return;
  ui.stages.querySelectorAll("label, span").forEach((el) => el.remove());
  for (const stage of graph) {
    const label = document.createElement("label");
    label.title = `${stage.engine}: ${stage.in} → ${stage.out}`;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = stage.name;
    box.checked = checked.has(stage.name) || !known.size;
    box.dataset.testid = `stage-${stage.name}`;
    label.append(box, ` ${stage.name} `);
    const engine = document.createElement("small");
    engine.className = "muted";
    engine.textContent = stage.engine;
    label.append(engine);
    ui.stages.append(label);
  }
}

/** The names ticked in the picker, or null when the picker is empty (subscribe to all). */
function selectedStages() {
  const boxes = [...ui.stages.querySelectorAll("input[type=checkbox]")];
  return boxes.length ? boxes.filter((b) => b.checked).map((b) => b.value) : null;
}

function renderMetricsHead() {
  const row = ui.table.tHead.rows[0];
  row.replaceChildren(...["turn", ...app.graph.map((s) => s.name), "voice→voice"].map((name) => {
    const th = document.createElement("th");
    th.textContent = name;
    return th;
  }));
}

function addMetrics(msg) {
  const first = msg.first_output_ms || {};
  const tr = document.createElement("tr");
  tr.dataset.turn = msg.turn;
  const cells = [msg.turn, ...app.graph.map((s) => first[s.name]), msg.voice_to_voice_ms];
  for (const value of cells) {
    const td = document.createElement("td");
    td.textContent = value == null ? "–" : String(Math.round(value));
    tr.append(td);
  }
  ui.table.tBodies[0].prepend(tr);
  while (ui.table.tBodies[0].rows.length > 50) ui.table.tBodies[0].lastChild.remove();
  chart.add({ turn: msg.turn, first, v2v: msg.voice_to_voice_ms ?? null });
}

// ------------------------------------------------------------------ conversation view

function newView() {
  ui.hint?.remove();
  const el = document.createElement("article");
  el.className = "turn";
  el.dataset.testid = "turn";
  const user = document.createElement("p");
  user.className = "user empty";
  user.dataset.testid = "user-text";
  const agent = document.createElement("p");
  agent.className = "agent empty";
  agent.dataset.testid = "agent-text";
  const status = document.createElement("p");
  status.className = "status";
  status.dataset.testid = "turn-status";
  el.append(user, agent, status);
  ui.conversation.append(el);
  ui.conversation.scrollTop = ui.conversation.scrollHeight;
  return { el, user, agent, status, reply: "" };
}

/** A typed input shows at once; it gets its turn id from the first message of the next new turn. */
function pendingView(kind, text) {
  const view = newView();
  view.el.dataset.turn = "";
  view.user.textContent = text;
  view.user.className = `user final typed ${kind}`;
  if (kind === "say") {
    view.agent.textContent = text; // the agent speaks exactly this (no LLM reply)
    view.agent.className = "agent final spoken";
  }
  app.pending.push(view);
}

function turnView(id, kind) {
  let view = app.turns.get(id);
  if (view) return view;
  // A turn that starts with the agent's output came from a text box input (text or say).
  view = kind !== "speech" && app.pending.length ? app.pending.shift() : newView();
  view.el.dataset.turn = id;
  app.turns.set(id, view);
  ui.turnCount.textContent = String(app.turns.size);
  return view;
}

function onMessage(msg) {
  // what a resume can replay: all but audio, ready and fatal errors (numbered, never replayed)
  const replayable = msg.type !== "audio" && msg.type !== "ready" && !(msg.type === "error" && msg.fatal);
  if (replayable && typeof msg.session_seq === "number") {
    app.seqs.push(msg.session_seq);
    if (app.seqs.length > 5000) app.seqs.shift();
  }
  if (msg.type !== "audio" && msg.type !== "pong") {
    app.log.push(msg); // the last messages, for the console (window.voxpipe.log)
    if (app.log.length > 200) app.log.shift();
  }
  switch (msg.type) {
    case "ready":
      renderStages(msg.graph || []);
      break;
    case "vad": {
      const view = turnView(msg.turn, "speech");
      view.el.classList.toggle("speaking", msg.event === "speech_start");
      break;
    }
    case "transcript": {
      const view = turnView(msg.turn, "speech");
      view.user.textContent = msg.text;
      view.user.className = `user ${msg.final ? "final" : "partial"}`;
      view.user.dataset.final = String(msg.final);
      break;
    }
    case "reply": {
      const view = turnView(msg.turn, "agent");
      view.reply += msg.text || "";
      view.agent.textContent = view.reply;
      view.agent.className = `agent ${msg.final ? "final" : "streaming"}`;
      view.agent.dataset.final = String(Boolean(msg.final));
      break;
    }
    case "audio":
      turnView(msg.turn, "agent");
      if (app.path === "websocket") player.push(msg.turn, msg.data, app.conn.ready.audio_out.rate);
      break;
    case "turn_end": {
      player.end(msg.turn);
      const view = turnView(msg.turn, "agent");
      view.el.classList.add("done");
      view.el.classList.remove("speaking");
      if (view.agent.classList.contains("streaming")) view.agent.className = "agent final";
      break;
    }
    case "agent_paused": {
      player.pause(); // voice over the agent: hold its audio while the words decide
      const view = turnView(msg.turn, "agent");
      view.el.classList.add("paused");
      view.status.textContent = "paused: listening…";
      break;
    }
    case "agent_resumed": {
      player.resume(); // a backchannel, a cough: it goes on where it paused
      const view = turnView(msg.turn, "agent");
      view.el.classList.remove("paused");
      view.status.textContent = "resumed (it was a backchannel or no words)";
      break;
    }
    case "interrupted": {
      player.drop(msg.turn);
      turnView(msg.turn, "agent").el.classList.remove("paused");
      const view = turnView(msg.turn, "agent");
      view.el.classList.add("interrupted");
      // Strike through what the user never heard.
      const full = view.agent.textContent;
      const heard = msg.text || "";
      if (full && full.startsWith(heard)) {
        const rest = document.createElement("span");
        rest.className = "unspoken";
        rest.textContent = full.slice(heard.length);
        view.agent.replaceChildren(heard, rest);
      }
      view.status.textContent = `interrupted after ${Math.round(msg.played_ms)} ms` +
        (msg.text ? ` — heard: “${msg.text}”` : "");
      break;
    }
    case "metrics":
      addMetrics(msg);
      break;
    case "error":
      if (msg.code === "going_away" || msg.code === "resume_failed") break; // the connection state says it
      showError(msg.code, msg.message, msg.fatal);
      if (msg.turn != null) {
        const view = app.turns.get(msg.turn);
        if (view) view.status.textContent = `error: ${msg.code}`;
      }
      break;
    case "pong":
      if (typeof msg.id === "number") ui.rtt.textContent = String(Math.round(performance.now() - msg.id));
      break;
    case "webrtc_answer":
      app.rtc?.accept(msg.sdp).catch((err) => showError("webrtc", String(err.message || err)));
      break;
    default:
      break;
  }
}

// ------------------------------------------------------------------ actions

async function connect() {
  app.path = document.querySelector("input[name=audio-path]:checked").value;
  const framing = ui.json.checked ? "json" : "msgpack";
  const selected = selectedStages();
  const all = selected === null || selected.length === app.graph.length;
  const hello = {
    audio_in: { format: "pcm16", rate: MIC_RATE_HZ, channels: 1, aec: true },
    audio_out: { format: "pcm16", rate: OUT_RATE_HZ[app.path] },
    subscribe: all ? "all" : selected,
  };
  let conn;
  try {
    await player.start(); // inside the click: the browser allows audio to play
    // ?resume_rewind=N (tests): a resume asks for N already-handled messages again, which must be ignored
    const rewind = Number(new URLSearchParams(location.search).get("resume_rewind")) || 0;
    conn = new Connection(ui.url.value.trim(), framing, { rewind });
  } catch (err) {
    showError("client", String(err.message || err), true);
    return;
  }
  app.conn = conn;
  // after a reconnect, onReconnected relabels "ready" in the same task (reconnected · / new session ·)
  conn.addEventListener("state", (e) => {
    if (e.detail.state === "ready") setState("ready", `connected · ${framing}`);
    else if (e.detail.state !== "reconnecting") setState(e.detail.state); // onReconnecting labels that one
  });
  conn.addEventListener("message", (e) => onMessage(e.detail));
  conn.addEventListener("reconnecting", (e) => onReconnecting(conn, e.detail));
  conn.addEventListener("reconnected", (e) => onReconnected(conn, framing, e.detail));
  conn.addEventListener("close", (e) => onClosed(conn, e.detail));
  setConnected(true);
  try {
    await conn.open(hello);
  } catch (err) {
    showError("connect", String(err.message || err), true);
    return;
  }
  app.pingTimer = setInterval(() => conn.send({ type: "ping", id: performance.now() }), 5000);
  conn.send({ type: "ping", id: performance.now() });
  if (app.path === "webrtc") await startRtc();
}

async function startRtc() {
  // A call needs the mic; once it is granted, the browser also offers its real host addresses (not mDNS names).
  if (!app.mic) await toggleMic();
  app.rtc = new RtcAudio({
    onState: (state) => {
      ui.rtcState.textContent = state;
      ui.rtcState.dataset.state = state;
    },
    onRemoteStream: (stream) => {
      ui.remote.srcObject = stream;
      ui.remote.play().catch(() => {});
      player.watchRemote(stream, (rms, ms) => {
        if (rms > AUDIBLE_RMS) {
          app.rtcHeardMs += ms;
          showPlayed();
        }
      });
    },
  });
  try {
    const sdp = await app.rtc.offer(app.mic?.track ?? null);
    app.conn?.send({ type: "webrtc_offer", sdp });
  } catch (err) {
    showError("webrtc", String(err.message || err));
  }
}

function onReconnecting(conn, { attempt, reason }) {
  if (app.conn !== conn) return;
  setState("reconnecting", `reconnecting · attempt ${attempt}`);
  ui.state.title = reason;
  player.drop(); // what is still buffered of the cut turn is not heard: the server cut the turn at what was
}

function onReconnected(conn, framing, { resumed, failureCode }) {
  if (app.conn !== conn) return;
  ui.resumes.textContent = String(conn.resumes);
  ui.state.title = "";
  if (resumed) {
    setState("ready", `reconnected · ${framing}`); // the replay follows: the cut turn's end, what was missed
  } else {
    // a new session: its turn ids start again, so the old conversation's views keep their place but not their ids
    app.turns.clear();
    app.pending = [];
    setState("ready", `new session · ${framing}`);
    showError(failureCode || "resume_failed", "the conversation could not be resumed: a new session started");
  }
  if (app.path === "webrtc") startRtc(); // the call belonged to the old connection
}

function onClosed(conn, { code, reason }) {
  if (app.conn !== conn) return;
  clearInterval(app.pingTimer);
  app.conn = null;
  app.pending = [];
  app.rtc?.close();
  app.rtc = null;
  player.unwatchRemote();
  player.drop();
  setConnected(false);
  setState("closed", `closed · ${code}`);
  if (code !== 1000 && code !== 1005) showError(`close_${code}`, reason || "the connection closed unexpectedly", true);
  if (app.mic) toggleMic();
}

async function toggleMic() {
  if (app.mic) {
    const mic = app.mic;
    app.mic = null;
    ui.mic.textContent = "Mic on";
    ui.mic.setAttribute("aria-pressed", "false");
    await app.rtc?.setMic(null);
    await mic.stop();
    app.conn?.send({ type: "commit" }); // the utterance ends with the mic
    return;
  }
  const mic = new Mic({
    rateHz: MIC_RATE_HZ,
    onLevel: (rms) => setLevel(ui.micLevel, rms),
    onFrame: (pcm) => {
      if (app.path !== "websocket" || !app.conn?.ready) return;
      if (app.conn.send({ type: "audio", data: pcm })) {
        app.sentMs += 20;
        ui.sent.textContent = String(app.sentMs);
      }
    },
  });
  try {
    await mic.start();
  } catch (err) {
    showError("microphone", String(err.message || err), false);
    await mic.stop();
    return;
  }
  app.mic = mic;
  ui.mic.textContent = "Mic off";
  ui.mic.setAttribute("aria-pressed", "true");
  await app.rtc?.setMic(mic.track);
}

function sendText(kind) {
  const text = ui.text.value.trim();
  if (!text || !app.conn) return;
  if (app.conn.send({ type: kind, text })) {
    pendingView(kind, text);
    ui.text.value = "";
  }
}

// ------------------------------------------------------------------ wiring

ui.url.value = location.host ? `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws` : "ws://localhost:8765/ws";
ui.connect.addEventListener("click", () => (app.conn ? app.conn.close() : connect()));
ui.mic.addEventListener("click", () => toggleMic());
ui.interrupt.addEventListener("click", () => {
  player.drop(); // silence at once; the server confirms with `interrupted`
  app.conn?.send({ type: "interrupt" });
});
ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  sendText("text");
});
ui.say.addEventListener("click", () => sendText("say"));
window.addEventListener("resize", () => chart.draw());

fetch("/healthz")
  .then((r) => (r.ok ? r.json() : null))
  .then((health) => health?.graph && renderStages(health.graph))
  .catch(() => {});
setState("disconnected");

// One voxpipe conversation over a WebSocket: framing (msgpack binary or JSON text), hello/ready,
// and every server message delivered as a plain object with `data` as a Uint8Array.
// Wire contract v1: see docs/protocol.md.

const MessagePack = globalThis.MessagePack;

function toBase64(bytes) {
  let binary = "";
  const step = 0x8000;
  for (let i = 0; i < bytes.length; i += step) {
    binary += String.fromCharCode.apply(null, bytes.subarray(i, i + step));
  }
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/** Encode one message for the wire; `data` fields are Uint8Array (bin in msgpack, base64 in JSON). */
export function encode(msg, framing) {
  if (framing === "msgpack") return MessagePack.encode(msg);
  if (msg.data instanceof Uint8Array) msg = { ...msg, data: toBase64(msg.data) };
  return JSON.stringify(msg);
}

/** Decode one server frame (ArrayBuffer = msgpack, string = JSON); audio `data` becomes a Uint8Array. */
export function decode(frame) {
  if (typeof frame === "string") {
    const msg = JSON.parse(frame);
    if (msg.type === "audio" && typeof msg.data === "string") msg.data = fromBase64(msg.data);
    return msg;
  }
  return MessagePack.decode(new Uint8Array(frame));
}

/** Whether a connection that ended this way ends the conversation (no resume): wire contract, "Resume". */
export function endsForGood(closeCode, fatalCode) {
  if (["going_away", "shutting_down", "server_full"].includes(fatalCode)) return false;
  if (fatalCode) return true; // idle_timeout, unauthorized, not_hello, ...
  return ![1001, 1006, 1011, 1012, 1013, 1014].includes(closeCode); // 1000 bye, 1008, 4000 taken over, ...
}

/** The pause before resume attempt `attempt`: none before the first, then initial doubling up to max, 50-100 %. */
export function backoffMs(attempt, initialMs, maxMs, random = Math.random) {
  if (attempt <= 1) return 0;
  return Math.floor(Math.min(maxMs, initialMs * 2 ** (attempt - 2)) * (0.5 + 0.5 * random()));
}

/**
 * One conversation, across reconnects. When the socket drops (or the server says going_away), it reconnects
 * on its own with `hello.resume` and `?session=<id>`, backing off between attempts; the server replays what
 * was missed, and a message whose session_seq is not above the highest handled is ignored. A refused resume
 * (`resume_failed`) gives a new session.
 * Events: "state" {state: connecting|ready|reconnecting|closed}, "message" (every server message handled,
 * once), "reconnecting" {attempt, delayMs, reason}, "reconnected" {resumed, session, previous, attempts,
 * failureCode, askedFrom (the resume's last_session_seq), handledSeq (the highest handled before the drop),
 * readySeq (the new ready's number: a replay is numbered below it)}, "close" {code, reason, clean} (for good).
 */
export class Connection extends EventTarget {
  constructor(url, framing, { resume = true, initialDelayMs = 250, maxDelayMs = 5000, maxAttempts = 16, rewind = 0 } = {}) {
    super();
    if (framing === "msgpack" && !MessagePack) throw new Error("msgpack library missing (vendor/msgpack)");
    this.url = url;
    this.framing = framing;
    this.options = { resume, initialDelayMs, maxDelayMs, maxAttempts, rewind };
    this.ws = null;
    this.ready = null;
    this.state = "disconnected";
    this.session = null;
    this.token = null;
    this.lastSeq = 0; // the highest session_seq handled (ready's own number aside)
    this.replayBefore = 0; // a resumed ready's number: the replay is numbered below it
    this.replayed = 0;
    this.ignored = 0;
    this.resumes = 0;
    this.lastResume = null; // the last "reconnected" detail
    this.closing = false;
    this.timer = null;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state) {
    this.state = state;
    this._emit("state", { state });
  }

  /** Open the socket, send `hello`, resolve with the `ready` message (reject on error or close). */
  open(hello) {
    this.hello = { type: "hello", protocol: 1, ...hello };
    this._setState("connecting");
    return new Promise((resolve, reject) => {
      this._attempt(this.url, this.hello, {
        ready: (msg) => resolve(msg),
        failed: (err, _fatalCode, event) => {
          this._finish({ code: event.code, reason: event.reason, clean: event.wasClean });
          reject(err);
        },
      });
    });
  }

  /**
   * One socket: hello, then messages. On its ready: the ready is adopted, `ready(msg, before)` runs, then the
   * messages that came before it (a refused resume's resume_failed) are delivered. `failed(err, fatalCode,
   * closeEvent)`: it closed before a ready.
   */
  _attempt(url, hello, { ready, failed }) {
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    let opened = false;
    let fatalCode = null;
    const before = [];
    ws.onopen = () => ws.send(encode(hello, this.framing));
    ws.onmessage = (event) => {
      let msg;
      try {
        msg = decode(event.data);
      } catch (err) {
        this._emit("message", { type: "error", code: "client_decode", message: String(err), fatal: false });
        return;
      }
      if (msg.type === "error" && msg.fatal) fatalCode = msg.code;
      if (opened) {
        this._deliver(msg);
      } else if (msg.type === "ready") {
        opened = true;
        this._adopt(msg);
        ready(msg, before);
        for (const early of before) this._deliver(early);
      } else if (!msg.fatal) {
        before.push(msg);
      }
    };
    ws.onclose = (event) => {
      if (this.ws === ws) this.ws = null;
      if (opened) this._ended(event, fatalCode);
      else failed(new Error(fatalCode ? `${fatalCode} (closed ${event.code})` : `cannot connect to ${url} (${event.code})`), fatalCode, event);
    };
  }

  /** Take a ready: a new session starts its numbering again. */
  _adopt(ready) {
    const resumed = this.session !== null && ready.session === this.session && ready.resumed === true;
    if (!resumed) this.lastSeq = 0;
    this.session = ready.session;
    this.token = ready.resume_token || null;
    this.replayBefore = resumed ? ready.session_seq : 0;
    this.ready = ready;
    this._setState("ready");
    this._emit("message", ready);
  }

  /** Hand a message on once: one not above the highest handled is a replay of what we had. */
  _deliver(msg) {
    const seq = msg.session_seq;
    if (typeof seq === "number") {
      if (seq <= this.lastSeq) {
        this.ignored++;
        return;
      }
      this.lastSeq = seq;
      if (seq < this.replayBefore) this.replayed++;
    }
    this._emit("message", msg);
  }

  _ended(event, fatalCode) {
    if (this.closing || !this.options.resume || endsForGood(event.code, fatalCode)) {
      this._finish({ code: event.code, reason: event.reason || fatalCode || "", clean: event.wasClean });
      return;
    }
    this._setState("reconnecting");
    this._reconnect(1, fatalCode ? `${fatalCode}` : `connection lost (${event.code})`);
  }

  _reconnect(attempt, reason) {
    if (this.closing) {
      this._finish({ code: 1000, reason: "client closed", clean: true }); // close() during an attempt
      return;
    }
    if (attempt > this.options.maxAttempts) {
      this._finish({ code: 1006, reason: `no resume after ${this.options.maxAttempts} attempts`, clean: false });
      return;
    }
    const delayMs = backoffMs(attempt, this.options.initialDelayMs, this.options.maxDelayMs);
    this._emit("reconnecting", { attempt, delayMs, reason });
    this.timer = setTimeout(() => {
      this.timer = null;
      const canResume = this.session !== null && this.token !== null;
      const hello = { ...this.hello };
      let url = this.url;
      if (canResume) {
        hello.resume = { session: this.session, token: this.token, last_session_seq: Math.max(0, this.lastSeq - this.options.rewind) };
        const u = new URL(this.url);
        u.searchParams.set("session", this.session);
        url = u.toString();
      }
      const previous = this.session;
      const handledSeq = this.lastSeq;
      this._attempt(url, hello, {
        ready: (msg, before) => {
          const refused = before.some((m) => m.type === "error" && m.code === "resume_failed");
          const resumed = msg.resumed === true && msg.session === previous;
          if (resumed) this.resumes++;
          this.lastResume = {
            resumed, session: msg.session, previous, attempts: attempt,
            failureCode: resumed ? null : refused ? "resume_failed" : canResume ? "not_resumed" : "resume_off",
            askedFrom: hello.resume?.last_session_seq ?? 0, handledSeq, readySeq: msg.session_seq,
          };
          this._emit("reconnected", this.lastResume);
        },
        failed: (err, fatalCode) => {
          if (endsForGood(null, fatalCode) && fatalCode) this._finish({ code: 1008, reason: String(err.message), clean: false });
          else this._reconnect(attempt + 1, `attempt ${attempt} failed: ${err.message}`);
        },
      });
    }, delayMs);
  }

  _finish(detail) {
    if (this.state === "closed") return;
    this._setState("closed");
    this._emit("close", detail);
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN && this.state === "ready";
  }

  send(msg) {
    if (!this.isOpen) return false;
    this.ws.send(encode(msg, this.framing));
    return true;
  }

  /** Say `bye` (the server closes with 1000; the session ends for good), or stop reconnecting. */
  close() {
    this.closing = true;
    if (this.timer !== null) {
      clearTimeout(this.timer);
      this.timer = null;
      this._finish({ code: 1000, reason: "client closed", clean: true });
      return;
    }
    if (!this.ws) return;
    const ws = this.ws;
    if (this.isOpen && this.ready) {
      this.send({ type: "bye" });
      setTimeout(() => ws.readyState !== WebSocket.CLOSED && ws.close(1000, "client closed"), 1000);
    } else {
      ws.close(1000, "client closed");
    }
  }
}

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

/**
 * Events: "state" {state: connecting|ready|closed}, "message" (every server message as detail),
 * "close" {code, reason, clean}.
 */
export class Connection extends EventTarget {
  constructor(url, framing) {
    super();
    if (framing === "msgpack" && !MessagePack) throw new Error("msgpack library missing (vendor/msgpack)");
    this.url = url;
    this.framing = framing;
    this.ws = null;
    this.ready = null;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Open the socket, send `hello`, resolve with the `ready` message (reject on error or close). */
  open(hello) {
    return new Promise((resolve, reject) => {
      let settled = false;
      const ws = new WebSocket(this.url);
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      this._emit("state", { state: "connecting" });
      ws.onopen = () => this.send({ type: "hello", protocol: 1, ...hello });
      ws.onmessage = (event) => {
        let msg;
        try {
          msg = decode(event.data);
        } catch (err) {
          this._emit("message", { type: "error", code: "client_decode", message: String(err), fatal: false });
          return;
        }
        if (msg.type === "ready" && !settled) {
          settled = true;
          this.ready = msg;
          this._emit("state", { state: "ready" });
          resolve(msg);
        } else if (msg.type === "error" && !settled && msg.fatal) {
          settled = true;
          reject(new Error(`${msg.code}: ${msg.message}`));
        }
        this._emit("message", msg);
      };
      ws.onerror = () => {
        if (!settled) {
          settled = true;
          reject(new Error(`cannot connect to ${this.url}`));
        }
      };
      ws.onclose = (event) => {
        this.ws = null;
        this._emit("state", { state: "closed" });
        this._emit("close", { code: event.code, reason: event.reason, clean: event.wasClean });
        if (!settled) {
          settled = true;
          reject(new Error(`connection closed (${event.code}${event.reason ? ": " + event.reason : ""})`));
        }
      };
    });
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(msg) {
    if (!this.isOpen) return false;
    this.ws.send(encode(msg, this.framing));
    return true;
  }

  /** Say `bye` (the server closes with 1000), or just close when the socket is not open yet. */
  close() {
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

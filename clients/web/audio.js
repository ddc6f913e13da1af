// Browser audio: the microphone (getUserMedia -> capture worklet -> PCM16 frames) and the agent's
// voice (playback worklet with a jitter buffer, or a WebRTC remote stream measured by an analyser).

const WORKLETS = new URL("./worklets/", import.meta.url);

/** Microphone with echo cancellation and noise suppression, delivering PCM16 frames at `rateHz`. */
export class Mic {
  constructor({ rateHz, frameMs = 20, onFrame, onLevel }) {
    this.rateHz = rateHz;
    this.frameMs = frameMs;
    this.onFrame = onFrame;
    this.onLevel = onLevel;
    this.stream = null;
    this.context = null;
    this.node = null;
  }

  get track() {
    return this.stream ? this.stream.getAudioTracks()[0] : null;
  }

  /** Settings the browser actually applied (echoCancellation may be unavailable on some devices). */
  get settings() {
    return this.track ? this.track.getSettings() : {};
  }

  async start() {
    if (!window.isSecureContext || !navigator.mediaDevices) {
      throw new Error("the microphone needs a secure page: open it as http://localhost:PORT or over https");
    }
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    // A context at the target rate lets the browser resample (Chrome); where a mic cannot feed a
    // context of another rate (Firefox), the context runs at the device rate and the worklet resamples.
    let source;
    for (const options of [{ sampleRate: this.rateHz }, {}]) {
      try {
        this.context = new AudioContext({ ...options, latencyHint: "interactive" });
        source = this.context.createMediaStreamSource(this.stream);
        break;
      } catch (err) {
        await this.context?.close();
        this.context = null;
        if (!options.sampleRate) throw err;
      }
    }
    await this.context.audioWorklet.addModule(new URL("capture.js", WORKLETS));
    this.node = new AudioWorkletNode(this.context, "voxpipe-capture", {
      numberOfOutputs: 1,
      processorOptions: { targetRate: this.rateHz, frameMs: this.frameMs },
    });
    this.node.port.onmessage = (event) => {
      this.onLevel?.(event.data.level);
      this.onFrame?.(new Uint8Array(event.data.pcm));
    };
    // Keep the worklet pulled: route it to the output through a muted gain.
    const mute = this.context.createGain();
    mute.gain.value = 0;
    source.connect(this.node).connect(mute).connect(this.context.destination);
    await this.context.resume();
  }

  async stop() {
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    if (this.node) this.node.port.onmessage = null;
    this.node = null;
    const context = this.context;
    this.context = null;
    await context?.close();
    this.onLevel?.(0);
  }
}

/** The agent's voice from `audio` messages: PCM16 chunks -> jitter buffer -> speakers. */
export class Player {
  constructor({ onPlayed, onLevel }) {
    this.onPlayed = onPlayed;
    this.onLevel = onLevel;
    this.context = null;
    this.node = null;
    this.analyser = null;
    this.remote = null;
  }

  /** Create the context; call from a click handler so the browser lets it play. */
  async start() {
    if (this.context) return;
    this.context = new AudioContext({ latencyHint: "interactive" });
    await this.context.audioWorklet.addModule(new URL("playback.js", WORKLETS));
    this.node = new AudioWorkletNode(this.context, "voxpipe-playback", {
      outputChannelCount: [1],
      processorOptions: { prebufferMs: 60, reportMs: 150 },
    });
    this.node.port.onmessage = (event) => {
      const msg = event.data;
      if (msg.type === "played") this.onPlayed?.(msg.turn, msg.ms, msg.final);
      else if (msg.type === "level") this.onLevel?.(msg.rms, msg);
    };
    this.node.connect(this.context.destination);
    await this.context.resume();
  }

  get rateHz() {
    return this.context ? this.context.sampleRate : 48000;
  }

  push(turn, bytes, rateHz) {
    if (!this.node) return;
    // Copy into an aligned buffer of its own, which is then transferred to the worklet.
    const pcm = new Uint8Array(bytes.byteLength);
    pcm.set(bytes);
    this.node.port.postMessage({ type: "chunk", turn, pcm: pcm.buffer, rate: rateHz }, [pcm.buffer]);
  }

  end(turn) {
    this.node?.port.postMessage({ type: "end", turn });
  }

  /** agent_paused: hold playback where it is, keeping what is queued; ``resume`` goes on from there. */
  pause() {
    this.node?.port.postMessage({ type: "pause" });
  }

  resume() {
    this.node?.port.postMessage({ type: "resume" });
  }

  /** Drop queued audio at once: one turn's (interrupted) or everything (no turn). */
  drop(turn) {
    this.node?.port.postMessage({ type: "drop", turn });
  }

  /** WebRTC path: measure the remote stream's level (it plays through an <audio> element). */
  watchRemote(stream, onFrame) {
    this.unwatchRemote();
    if (!this.context) return;
    const source = this.context.createMediaStreamSource(stream);
    const analyser = this.context.createAnalyser();
    analyser.fftSize = 2048;
    source.connect(analyser);
    const buf = new Float32Array(analyser.fftSize);
    const timer = setInterval(() => {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
      const rms = Math.sqrt(sum / buf.length);
      this.onLevel?.(rms, {});
      onFrame?.(rms, 50);
    }, 50);
    this.remote = { source, analyser, timer };
  }

  unwatchRemote() {
    if (!this.remote) return;
    clearInterval(this.remote.timer);
    this.remote.source.disconnect();
    this.remote = null;
  }

  async stop() {
    this.unwatchRemote();
    const context = this.context;
    this.context = null;
    this.node = null;
    await context?.close();
    this.onLevel?.(0, {});
  }
}

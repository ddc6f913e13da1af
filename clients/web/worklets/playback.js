// Agent audio out: a small jitter buffer of PCM16 chunks per turn, resampled (linear) from the
// server's audio_out rate to the context rate on arrival.
// In:  {type:"chunk", turn, pcm: ArrayBuffer (PCM16 LE), rate} | {type:"end", turn} | {type:"drop", turn?}
//      | {type:"pause"} | {type:"resume"} (agent_paused / agent_resumed: hold playback, keep the buffer)
// Out: {type:"played", turn, ms} about every reportMs while playing and once when a turn drains,
//      {type:"level", rms, bufferedMs, underruns} about every 50 ms.
// Playback starts once prebufferMs is queued (or the turn has ended); an underrun goes back to buffering.

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { prebufferMs = 60, reportMs = 150 } = options.processorOptions || {};
    this.prebuffer = Math.round((sampleRate * prebufferMs) / 1000);
    this.reportEvery = Math.round((sampleRate * reportMs) / 1000);
    this.levelEvery = Math.round(sampleRate * 0.05);
    this.queue = []; // {turn, samples: Float32Array, offset}
    this.queued = 0; // samples in the queue
    this.ended = new Set(); // turns whose last chunk has arrived
    this.playing = false;
    this.held = false; // agent_paused: nothing plays, the queue is kept for agent_resumed
    this.played = new Map(); // turn -> samples played
    this.sinceReport = 0;
    this.sinceLevel = 0;
    this.sumSquares = 0;
    this.underruns = 0;
    this.current = null; // turn of the last sample played
    this.lastFinished = null; // last turn played to its end
    this.resample = { turn: null, prev: 0, pos: 0 };
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (msg.type === "chunk") {
      const samples = this.convert(msg.turn, new Int16Array(msg.pcm), msg.rate);
      if (samples.length) {
        this.queue.push({ turn: msg.turn, samples, offset: 0 });
        this.queued += samples.length;
      }
    } else if (msg.type === "end") {
      this.ended.add(msg.turn);
      if (!this.queue.some((c) => c.turn === msg.turn)) this.finishTurn(msg.turn);
    } else if (msg.type === "pause") {
      this.held = true;
    } else if (msg.type === "resume") {
      this.held = false;
    } else if (msg.type === "drop") {
      this.held = false; // an interruption ends the pause with the turn
      // Interrupted: forget the turn's queued audio now (all audio when no turn is given).
      const keep = msg.turn === undefined ? [] : this.queue.filter((c) => c.turn !== msg.turn);
      this.queue = keep;
      this.queued = keep.reduce((n, c) => n + c.samples.length - c.offset, 0);
      if (msg.turn === undefined) {
        this.played.clear();
        this.ended.clear();
      } else {
        this.played.delete(msg.turn);
        this.ended.delete(msg.turn);
      }
      this.lastFinished = this.current;
      if (!this.queued) this.playing = false;
    }
  }

  convert(turn, pcm, rate) {
    const state = this.resample;
    if (state.turn !== turn) {
      state.turn = turn;
      state.prev = 0;
      state.pos = 1; // the first output sample is the chunk's first sample
    }
    const step = rate / sampleRate; // input samples per output sample
    if (step === 1) return Float32Array.from(pcm, (s) => s / 32768);
    const out = new Float32Array(Math.ceil(pcm.length / step) + 2);
    let n = 0;
    for (let i = 0; i < pcm.length; i++) {
      const x = pcm[i] / 32768;
      while (state.pos <= 1) {
        out[n++] = state.prev + (x - state.prev) * state.pos;
        state.pos += step;
      }
      state.pos -= 1;
      state.prev = x;
    }
    return out.subarray(0, n);
  }

  finishTurn(turn) {
    this.ended.delete(turn);
    this.lastFinished = turn;
    const samples = this.played.get(turn);
    if (samples !== undefined) {
      this.port.postMessage({ type: "played", turn, ms: (samples * 1000) / sampleRate, final: true });
      this.played.delete(turn);
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (!this.playing) {
      const endedQueued = this.queue.length && this.ended.has(this.queue[this.queue.length - 1].turn);
      if (this.queued >= this.prebuffer || endedQueued) this.playing = true;
    }
    let i = 0;
    while (this.playing && !this.held && i < out.length && this.queue.length) {
      const chunk = this.queue[0];
      const take = Math.min(out.length - i, chunk.samples.length - chunk.offset);
      out.set(chunk.samples.subarray(chunk.offset, chunk.offset + take), i);
      i += take;
      chunk.offset += take;
      this.queued -= take;
      this.played.set(chunk.turn, (this.played.get(chunk.turn) || 0) + take);
      this.current = chunk.turn;
      if (chunk.offset === chunk.samples.length) {
        this.queue.shift();
        if (this.ended.has(chunk.turn) && !this.queue.some((c) => c.turn === chunk.turn)) this.finishTurn(chunk.turn);
      }
    }
    if (this.playing && !this.held && !this.queue.length) {
      // Ran dry in the middle of a turn (its end has not been played): the network was late.
      if (this.current !== null && this.current !== this.lastFinished) this.underruns++;
      this.playing = false;
    }
    for (let k = i; k < out.length; k++) out[k] = 0;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    for (let k = 0; k < out.length; k++) this.sumSquares += out[k] * out[k];

    this.sinceReport += out.length;
    if (this.sinceReport >= this.reportEvery) {
      this.sinceReport = 0;
      for (const [turn, samples] of this.played) {
        this.port.postMessage({ type: "played", turn, ms: (samples * 1000) / sampleRate, final: false });
      }
    }
    this.sinceLevel += out.length;
    if (this.sinceLevel >= this.levelEvery) {
      const rms = Math.sqrt(this.sumSquares / this.sinceLevel);
      this.port.postMessage({ type: "level", rms, bufferedMs: (this.queued * 1000) / sampleRate, underruns: this.underruns });
      this.sinceLevel = 0;
      this.sumSquares = 0;
    }
    return true;
  }
}

registerProcessor("voxpipe-playback", PlaybackProcessor);

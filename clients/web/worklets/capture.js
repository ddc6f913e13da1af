// Microphone -> PCM16 LE mono at the rate declared in `hello` (processorOptions.targetRate), in
// frames of processorOptions.frameMs (20 ms). When the context runs faster than the target rate, a
// 4th-order low-pass (two RBJ biquads) removes what would alias, then linear interpolation picks
// the output samples. Posts {pcm: ArrayBuffer, level: rms 0..1} per frame (the buffer is transferred).

class Biquad {
  constructor(cutoffHz, rateHz) {
    const w = (2 * Math.PI * cutoffHz) / rateHz;
    const alpha = Math.sin(w) / (2 * Math.SQRT1_2);
    const cos = Math.cos(w);
    const a0 = 1 + alpha;
    this.b0 = (1 - cos) / 2 / a0;
    this.b1 = (1 - cos) / a0;
    this.b2 = this.b0;
    this.a1 = (-2 * cos) / a0;
    this.a2 = (1 - alpha) / a0;
    this.x1 = this.x2 = this.y1 = this.y2 = 0;
  }

  step(x) {
    const y = this.b0 * x + this.b1 * this.x1 + this.b2 * this.x2 - this.a1 * this.y1 - this.a2 * this.y2;
    this.x2 = this.x1;
    this.x1 = x;
    this.y2 = this.y1;
    this.y1 = y;
    return y;
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 16000, frameMs = 20 } = options.processorOptions || {};
    this.step = sampleRate / targetRate; // input samples per output sample
    this.filters = this.step > 1 ? [new Biquad(0.45 * targetRate, sampleRate), new Biquad(0.45 * targetRate, sampleRate)] : [];
    this.frameSamples = Math.round((targetRate * frameMs) / 1000);
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.pos = 0; // position of the next output sample, in input samples relative to `prev`
    this.prev = 0;
    this.sumSquares = 0;
  }

  push(sample) {
    const clipped = Math.max(-1, Math.min(1, sample));
    this.frame[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    this.sumSquares += clipped * clipped;
    if (this.filled === this.frameSamples) {
      const level = Math.sqrt(this.sumSquares / this.frameSamples);
      const pcm = this.frame.buffer;
      this.port.postMessage({ pcm, level }, [pcm]); // transferred: the old array is detached now
      this.frame = new Int16Array(this.frameSamples);
      this.filled = 0;
      this.sumSquares = 0;
    }
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    if (this.step === 1) {
      for (let i = 0; i < input.length; i++) this.push(input[i]);
      return true;
    }
    for (let i = 0; i < input.length; i++) {
      let x = input[i];
      for (const f of this.filters) x = f.step(x);
      // Output samples that fall between `prev` (t = 0) and `x` (t = 1).
      while (this.pos <= 1) {
        this.push(this.prev + (x - this.prev) * this.pos);
        this.pos += this.step;
      }
      this.pos -= 1;
      this.prev = x;
    }
    return true;
  }
}

registerProcessor("voxpipe-capture", CaptureProcessor);

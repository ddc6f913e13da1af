// VoxpipePlayback: the agent's audio between the network thread (Write) and the audio thread (Read), in a
// lock-protected ring buffer at the server's audio_out rate. No Unity API, so the console harness plays
// through the same code as Samples/VoxpipeNpc.cs.
// - Write (on Audio) appends a chunk; when the ring is full the newest samples are dropped.
// - Pause (on AgentPaused) holds playback where it is, keeping the buffer; Resume (on AgentResumed) plays
//   on from there, nothing lost (wire contract, "Agent pause").
// - Flush (on Interrupted) empties the buffer, ignores that turn from then on, and ends a pause.
// - Read fills the audio device's buffer, resampling (nearest sample) serverRate -> deviceRate; silence
//   while held or empty. PlayingTurn / PlayedSamples are what `played` acks report.
using System;
using System.Collections.Generic;
using System.Threading;

namespace Voxpipe
{
    public sealed class VoxpipePlayback
    {
        readonly object ringLock = new object();
        readonly float[] ring;
        int ringRead, ringCount;
        double resamplePos;                  // fractional read position when the rates differ
        bool held;                           // agent_paused: nothing plays, the buffer is kept
        readonly HashSet<int> cutTurns = new HashSet<int>();
        // which turn the sample at the ring's read position belongs to, as (turn, samples) runs
        readonly Queue<int[]> turnRuns = new Queue<int[]>();
        volatile int playingTurn = -1;
        long playedSamples;                  // of playingTurn
        long totalPlayed;                    // of every turn, since this was made

        /// capacitySamples: how much agent audio the ring holds, at the server's rate.
        public VoxpipePlayback(int capacitySamples)
        {
            ring = new float[Math.Max(1, capacitySamples)];
        }

        public int PlayingTurn { get { return playingTurn; } }
        public long PlayedSamples { get { return Interlocked.Read(ref playedSamples); } }   // of PlayingTurn
        public long TotalPlayed { get { return Interlocked.Read(ref totalPlayed); } }
        public bool Held { get { lock (ringLock) return held; } }
        public int Buffered { get { lock (ringLock) return ringCount; } }

        /// Network thread: a chunk of `turn` (PCM16 at the server's rate). Returns the samples kept.
        public int Write(int turn, short[] samples)
        {
            lock (ringLock)
            {
                if (cutTurns.Contains(turn)) return 0;   // belt and braces: the server sends none after interrupted
                int n = Math.Min(samples.Length, ring.Length - ringCount);   // overflow: drop the newest
                int write = (ringRead + ringCount) % ring.Length;
                for (int i = 0; i < n; i++) ring[(write + i) % ring.Length] = samples[i] / 32768f;
                ringCount += n;
                if (n > 0) turnRuns.Enqueue(new[] { turn, n });
                return n;
            }
        }

        /// agent_paused: hold playback where it is; the buffer is kept for Resume.
        public void Pause() { lock (ringLock) held = true; }

        /// agent_resumed: play on from where it was held.
        public void Resume() { lock (ringLock) held = false; }

        /// interrupted: drop what is buffered (the cut is heard at once), ignore the turn's audio from now on,
        /// and end a pause (the turn it held is over).
        public void Flush(int turn)
        {
            lock (ringLock)
            {
                cutTurns.Add(turn);
                Drop();
            }
        }

        /// A new session (turn ids start again): drop everything, forget the cut turns.
        public void Clear()
        {
            lock (ringLock)
            {
                cutTurns.Clear();
                Drop();
            }
        }

        void Drop()
        {
            ringCount = 0;
            turnRuns.Clear();
            resamplePos = 0;
            held = false;
        }

        /// Audio thread: fill `data` (interleaved, `channels`), `step` = serverRate / deviceRate. Returns the
        /// frames of `data` that carry agent audio (the first ones; the rest is silence).
        public int Read(float[] data, int channels, double step)
        {
            int frames = 0;
            lock (ringLock)
            {
                for (int i = 0; i < data.Length; i += channels)
                {
                    float sample = 0f;
                    if (ringCount > 0 && !held)
                    {
                        sample = ring[ringRead];
                        frames++;
                        resamplePos += step;
                        int consumed = (int)resamplePos;
                        resamplePos -= consumed;
                        Consume(Math.Min(consumed, ringCount));
                    }
                    for (int c = 0; c < channels; c++) data[i + c] = sample;
                }
            }
            return frames;
        }

        void Consume(int n)
        {
            ringRead = (ringRead + n) % ring.Length;
            ringCount -= n;
            Interlocked.Add(ref totalPlayed, n);
            while (n > 0 && turnRuns.Count > 0)
            {
                var run = turnRuns.Peek();
                if (run[0] != playingTurn) { playingTurn = run[0]; Interlocked.Exchange(ref playedSamples, 0); }
                int take = Math.Min(n, run[1]);
                run[1] -= take;
                n -= take;
                Interlocked.Add(ref playedSamples, take);
                if (run[1] == 0) turnRuns.Dequeue();
            }
        }
    }
}

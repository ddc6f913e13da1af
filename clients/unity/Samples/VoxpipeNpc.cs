// VoxpipeNpc: a thin Unity sample around VoxpipeClient. Put it on a GameObject with an AudioSource.
// - Captures the default Microphone, sends 20 ms PCM16 frames (audio_in.aec = false: Unity's Microphone
//   has no echo canceller, so the server's echo guard keeps the NPC's own voice from interrupting it).
// - Plays the agent through OnAudioFilterRead from a lock-protected ring buffer (streaming, no AudioClip
//   per chunk), flushes that buffer on `interrupted`, and acks what was actually played (`played`).
// - Client events arrive on a network thread; anything that touches Unity objects is queued to Update.
// - A dropped socket resumes on its own (VoxpipeClient); a refused resume starts a new session.
// Not compiled by the repository's tests (it needs UnityEngine); the core it uses is.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Threading;
using UnityEngine;
using Voxpipe;

[RequireComponent(typeof(AudioSource))]
public sealed class VoxpipeNpc : MonoBehaviour
{
    public string serverUrl = "ws://127.0.0.1:8765/ws";
    [Tooltip("Set when the platform's mic path already cancels echo (e.g. a headset, iOS voice processing).")]
    public bool clientHasEchoCancellation = false;
    public string systemPrompt = "You are a blacksmith in a medieval village. Answer in one short sentence.";
    [Tooltip("Seconds of agent audio the ring buffer can hold.")]
    public float playbackBufferSeconds = 10f;

    public string Subtitle { get; private set; }   // the reply as it streams, for a UI label
    int subtitleTurn = -1;

    const int FrameMs = 20;
    VoxpipeClient client;
    readonly ConcurrentQueue<Action> mainThread = new ConcurrentQueue<Action>();

    // microphone
    AudioClip micClip;
    string micDevice;
    int micRate, micReadPos;
    float[] micScratch = new float[0];
    readonly List<short> micPending = new List<short>();

    // playback: written by the network thread, read by the audio thread
    readonly object ringLock = new object();
    float[] ring;
    int ringRead, ringCount;
    int outputRate, serverOutRate;
    double resamplePos;                      // fractional read position when the rates differ
    readonly HashSet<int> cutTurns = new HashSet<int>();
    // which turn the sample at the ring's read position belongs to, as (turn, samples) runs
    readonly Queue<int[]> turnRuns = new Queue<int[]>();
    int playingTurn = -1;
    long playedSamples;                      // of playingTurn, at serverOutRate; read by Update for acks
    float nextAckTime;

    async void Start()
    {
        outputRate = AudioSettings.outputSampleRate;
        // The protocol allows 8/16/24/48 kHz; ask for the device rate when allowed, else 48 kHz + resampling.
        serverOutRate = (outputRate == 48000 || outputRate == 24000 || outputRate == 16000) ? outputRate : 48000;
        ring = new float[(int)(serverOutRate * playbackBufferSeconds)];

        micDevice = Microphone.devices.Length > 0 ? Microphone.devices[0] : null;
        int minRate, maxRate;
        Microphone.GetDeviceCaps(micDevice, out minRate, out maxRate);
        micRate = (minRate == 0 && maxRate == 0) || (minRate <= 16000 && 16000 <= maxRate) ? 16000 : 48000;
        micClip = Microphone.Start(micDevice, true, 1, micRate);

        var source = GetComponent<AudioSource>();
        // A silent looping clip keeps the AudioSource (and so OnAudioFilterRead) running.
        source.clip = AudioClip.Create("voxpipe", outputRate, 1, outputRate, false);
        source.loop = true;
        source.Play();

        client = new VoxpipeClient(new VoxpipeOptions
        {
            InputRate = micRate, OutputRate = serverOutRate,
            Aec = clientHasEchoCancellation, SystemPrompt = systemPrompt,
        });
        client.Audio += OnAudio;
        client.Interrupted += e => { Flush(e.Turn); mainThread.Enqueue(() => Subtitle = e.Text); };
        client.Reply += e => mainThread.Enqueue(() =>
        {
            if (e.Turn != subtitleTurn) { subtitleTurn = e.Turn; Subtitle = ""; }
            Subtitle += e.Text;
        });
        client.Transcript += e => { if (e.Final) mainThread.Enqueue(() => Debug.Log("heard: " + e.Text)); };
        client.Error += e => mainThread.Enqueue(() => Debug.LogWarning("voxpipe " + e.Code + ": " + e.Message));
        // A dropped socket resumes on its own; the cut turn's `interrupted` comes in the replay (Flush above).
        client.Reconnecting += e => mainThread.Enqueue(() => Debug.Log("voxpipe reconnecting (attempt " + e.Attempt + "): " + e.Reason));
        client.Reconnected += e =>
        {
            if (!e.Resumed) lock (ringLock) { cutTurns.Clear(); ringCount = 0; turnRuns.Clear(); }  // turn ids restart
            mainThread.Enqueue(() => Debug.Log(e.Resumed ? "voxpipe resumed " + e.Session
                                                         : "voxpipe: new session " + e.Session + " (" + e.FailureCode + "), the NPC forgot the conversation"));
        };
        client.Closed += exc => mainThread.Enqueue(() => Debug.Log("voxpipe closed " + (exc != null ? exc.Message : "")));
        try
        {
            await client.ConnectAsync(new Uri(serverUrl));
            Debug.Log("voxpipe ready: session " + client.Ready.Session);
        }
        catch (Exception exc)
        {
            Debug.LogError("voxpipe connect failed: " + exc.Message);
            client = null;
        }
    }

    void Update()
    {
        Action action;
        while (mainThread.TryDequeue(out action)) action();
        if (client == null || client.Ready == null) return;
        PumpMicrophone();
        if (Time.unscaledTime >= nextAckTime && playingTurn >= 0)
        {
            nextAckTime = Time.unscaledTime + 0.1f;
            client.Played(playingTurn, Interlocked.Read(ref playedSamples) * 1000.0 / serverOutRate);
        }
    }

    void PumpMicrophone()
    {
        int pos = Microphone.GetPosition(micDevice);
        int available = (pos - micReadPos + micClip.samples) % micClip.samples;
        if (available <= 0) return;
        if (micScratch.Length != available) micScratch = new float[available];
        micClip.GetData(micScratch, micReadPos);   // GetData wraps around the looping clip
        micReadPos = pos;
        foreach (var f in micScratch) micPending.Add((short)(Mathf.Clamp(f, -1f, 1f) * 32767));
        int frame = micRate * FrameMs / 1000;
        while (micPending.Count >= frame)
        {
            client.SendAudio(micPending.GetRange(0, frame).ToArray());
            micPending.RemoveRange(0, frame);
        }
    }

    // network thread
    void OnAudio(AudioEvent e)
    {
        lock (ringLock)
        {
            if (cutTurns.Contains(e.Turn)) return;   // belt and braces: the server sends none after interrupted
            int n = Math.Min(e.Samples.Length, ring.Length - ringCount);   // overflow: drop the newest
            int write = (ringRead + ringCount) % ring.Length;
            for (int i = 0; i < n; i++) ring[(write + i) % ring.Length] = e.Samples[i] / 32768f;
            ringCount += n;
            turnRuns.Enqueue(new[] { e.Turn, n });
        }
    }

    // network thread
    void Flush(int turn)
    {
        lock (ringLock)
        {
            cutTurns.Add(turn);
            ringCount = 0;
            turnRuns.Clear();
            resamplePos = 0;
        }
    }

    // audio thread: fill `data` (interleaved, `channels`) from the ring, resampling serverOutRate -> outputRate
    void OnAudioFilterRead(float[] data, int channels)
    {
        double step = (double)serverOutRate / outputRate;
        lock (ringLock)
        {
            for (int i = 0; i < data.Length; i += channels)
            {
                float sample = 0f;
                if (ringCount > 0)
                {
                    sample = ring[ringRead];
                    resamplePos += step;
                    int consumed = (int)resamplePos;
                    resamplePos -= consumed;
                    Consume(Math.Min(consumed, ringCount));
                }
                for (int c = 0; c < channels; c++) data[i + c] = sample;
            }
        }
    }

    void Consume(int n)
    {
        ringRead = (ringRead + n) % ring.Length;
        ringCount -= n;
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

    /// Call from gameplay: the NPC speaks a line, or the player typed something.
    public void Say(string line) { if (client != null) client.Say(line); }
    public void Ask(string text) { if (client != null) client.SendText(text); }
    public void StopTalking() { if (client != null) client.Interrupt(); }

    async void OnDestroy()
    {
        if (micClip != null && Microphone.IsRecording(micDevice)) Microphone.End(micDevice);
        var c = client;
        client = null;
        if (c != null) { await c.CloseAsync(); c.Dispose(); }
    }
}

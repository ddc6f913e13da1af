// VoxpipeNpc: a thin Unity sample around VoxpipeClient. Put it on a GameObject with an AudioSource.
// - Captures the default Microphone, sends 20 ms PCM16 frames (audio_in.aec = false: Unity's Microphone
//   has no echo canceller, so the server's echo guard keeps the NPC's own voice from interrupting it).
// - Plays the agent through OnAudioFilterRead from VoxpipePlayback (Runtime/: a lock-protected ring buffer,
//   streaming, no AudioClip per chunk): holds it on `agent_paused` (the buffer kept) and plays on from there
//   on `agent_resumed`, flushes it on `interrupted` (which also ends a pause), and acks what was actually
//   played (`played`).
// - Client events arrive on a network thread; anything that touches Unity objects is queued to Update.
// - A dropped socket resumes on its own (VoxpipeClient); a refused resume starts a new session.
// Not compiled by the repository's tests (it needs UnityEngine); the core it uses is.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
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

    // playback: written by the network thread, read by the audio thread (VoxpipePlayback locks)
    VoxpipePlayback playback;
    int outputRate, serverOutRate;
    float nextAckTime;

    async void Start()
    {
        outputRate = AudioSettings.outputSampleRate;
        // The protocol allows 8/16/24/48 kHz; ask for the device rate when allowed, else 48 kHz + resampling.
        serverOutRate = (outputRate == 48000 || outputRate == 24000 || outputRate == 16000) ? outputRate : 48000;
        playback = new VoxpipePlayback((int)(serverOutRate * playbackBufferSeconds));

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
        client.Audio += e => playback.Write(e.Turn, e.Samples);   // network thread; the playback locks
        // Voice over the NPC: hold its playback (the buffer kept) while the server decides; a backchannel or a
        // cough resumes it where it was, real words interrupt it (the flush also ends the pause).
        client.AgentPaused += turn => playback.Pause();
        client.AgentResumed += turn => playback.Resume();
        client.Interrupted += e => { playback.Flush(e.Turn); mainThread.Enqueue(() => Subtitle = e.Text); };
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
            if (!e.Resumed) playback.Clear();   // turn ids restart (and a pause of the old session ends)
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
        int playingTurn = playback.PlayingTurn;
        if (Time.unscaledTime >= nextAckTime && playingTurn >= 0)
        {
            nextAckTime = Time.unscaledTime + 0.1f;
            client.Played(playingTurn, playback.PlayedSamples * 1000.0 / serverOutRate);   // none grows while held
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

    // audio thread: fill `data` (interleaved, `channels`) from the playback, resampling serverOutRate -> outputRate;
    // silence while it is held (agent_paused) or empty
    void OnAudioFilterRead(float[] data, int channels)
    {
        var p = playback;
        if (p != null) p.Read(data, channels, (double)serverOutRate / outputRate);
        else Array.Clear(data, 0, data.Length);
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

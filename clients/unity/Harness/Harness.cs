// Console harness for VoxpipeClient: proves the client against a running voxpipe server.
//   mono harness.exe ws://127.0.0.1:8765/ws out.wav [--rate 24000] [--drop [--rewind N]] [--pause]
// 1. say  -> every audio chunk of the turn until turn_end (seq 0,1,2..., one turn) -> out.wav
// 2. text -> prints the streamed reply, then waits for turn_end
// 3. a long say, interrupt after its first audio -> interrupted arrives, and no audio / turn_end of
//    that turn follows it.
// 4. (--drop) a long text turn; after 25 audio chunks (500 ms) it prints "drop: ..." and waits for the connection
//    to drop (the test cuts it); the client resumes on its own ("reconnecting:", "resume:" lines), the
//    cut turn's interrupted is replayed, and a new text is answered ("reply after resume: ...").
//    --rewind N makes the resume ask for N already-handled messages again: they must be ignored.
// 5. (--pause; the server in barge_in "words" mode, a test ASR that hears "yeah" in short audio) a long say played
//    through VoxpipePlayback by a simulated sound card (10 ms blocks on a real-time clock); after 30 chunks it
//    streams a short tone as the mic (200 ms, then 1.5 s of silence, in real time): the server pauses the agent
//    (agent_paused), hears a backchannel and resumes it (agent_resumed). Prints "pause: ..." lines: the samples
//    played between the two events (0: held), what was buffered at the pause, and that every sample received
//    was played, in order, once the turn ended.
// Last line before the verdict: "handled: <session_seq of every message handled that a resume could replay
// (all but audio and fatal errors), in order>".
// Exit code 0 only when every check held; 1 with "FAIL: ..." lines otherwise; 2 when it could not run.
using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Threading;
using Voxpipe;

static class Harness
{
    static readonly BlockingCollection<object> Events = new BlockingCollection<object>(new ConcurrentQueue<object>(), 100000);
    static readonly List<string> Failures = new List<string>();
    static VoxpipeClient client;
    // every message handled: (session, session_seq, never replayed?); numbering starts again in a new session
    static readonly List<Tuple<string, long, bool>> Handled = new List<Tuple<string, long, bool>>();

    sealed class TurnEnded { public int Turn; }
    // agent_paused / agent_resumed, with the playback as it stood when the event arrived (network thread)
    sealed class PauseEvent { public int Turn; public bool Resumed; public long Played; public int Buffered; public double AtMs; }
    static VoxpipePlayback player;           // step 5 only: fed by the client's callbacks, as a game's would be
    static readonly Stopwatch Since = Stopwatch.StartNew();
    sealed class ClosedEvent { public Exception Failure; }

    static int Main(string[] args)
    {
        if (args.Length < 2)
        {
            Console.Error.WriteLine("usage: harness.exe WS_URL OUT.wav [--rate HZ] [--drop [--rewind N]] [--pause]");
            return 2;
        }
        int rate = 16000, rewind = 0;
        bool drop = false, pause = false;
        for (int i = 2; i < args.Length; i++)
        {
            if (args[i] == "--rate" && i + 1 < args.Length) rate = int.Parse(args[++i]);
            else if (args[i] == "--rewind" && i + 1 < args.Length) rewind = int.Parse(args[++i]);
            else if (args[i] == "--drop") drop = true;
            else if (args[i] == "--pause") pause = true;
        }
        try
        {
            return Run(new Uri(args[0]), args[1], rate, drop, rewind, pause);
        }
        catch (Exception exc)
        {
            Console.Error.WriteLine("ERROR: " + exc.GetType().Name + ": " + exc.Message);
            return 2;
        }
    }

    static int Run(Uri url, string wavPath, int rate, bool drop, int rewind, bool pause)
    {
        client = new VoxpipeClient(new VoxpipeOptions { InputRate = 16000, OutputRate = rate, ResumeRewindMessages = rewind });
        client.Message += m =>
        {
            object seq;
            if (!m.TryGetValue("session_seq", out seq) || !(seq is long)) return;
            // audio and fatal errors (going_away) are numbered but never replayed: kept apart from the record
            bool replayable = m["type"] as string != "audio" && !(m["type"] as string == "error" && m.ContainsKey("fatal") && true.Equals(m["fatal"]));
            lock (Handled) Handled.Add(Tuple.Create(client.Ready.Session, (long)seq, !replayable));
        };
        client.Reconnecting += e => Events.Add(e);
        client.Reconnected += e => Events.Add(e);
        // The playback first, on the network thread (a game's audio thread would read it meanwhile); then the record.
        client.Audio += e => { var p = player; if (p != null) p.Write(e.Turn, e.Samples); };
        client.AgentPaused += turn => OnPause(turn, false);
        client.AgentResumed += turn => OnPause(turn, true);
        client.Interrupted += e => { var p = player; if (p != null) p.Flush(e.Turn); };
        client.Audio += e => Events.Add(e);
        client.Reply += e => Events.Add(e);
        client.TurnEnd += t => Events.Add(new TurnEnded { Turn = t });
        client.Interrupted += e => Events.Add(e);
        client.Error += e => Events.Add(e);
        client.Closed += exc => Events.Add(new ClosedEvent { Failure = exc });

        var ready = client.ConnectAsync(url).GetAwaiter().GetResult();
        var stages = new List<string>();
        foreach (var s in ready.Graph) stages.Add(s.Name + "(" + s.Engine + ")");
        Console.WriteLine("ready: session " + ready.Session + ", graph " + string.Join(" -> ", stages) + ", audio_out " + ready.OutputRate + " Hz");
        Check(ready.OutputRate == rate, "ready.audio_out.rate is " + ready.OutputRate + ", asked " + rate);

        SayToWav(wavPath, ready.OutputRate);
        TextReply();
        InterruptLongSay();
        if (drop) DropAndResume();
        if (pause) PauseAndResume(ready.OutputRate);

        // bounded: a close handshake the server never answers is a failure, not a hang
        if (!client.CloseAsync().Wait(10000)) Failures.Add("close: no closing handshake within 10 s");
        client.Dispose();
        ReportHandled();
        if (Failures.Count == 0)
        {
            Console.WriteLine("OK: all checks held");
            return 0;
        }
        foreach (var f in Failures) Console.WriteLine("FAIL: " + f);
        return 1;
    }

    static void Check(bool ok, string what)
    {
        if (!ok) Failures.Add(what);
    }

    static object Next(int timeoutMs)
    {
        object e;
        if (!Events.TryTake(out e, timeoutMs)) return null;
        var err = e as ErrorEvent;
        if (err != null) Failures.Add("server error " + err.Code + ": " + err.Message);
        var closed = e as ClosedEvent;
        if (closed != null) throw new Exception("connection closed" + (closed.Failure != null ? ": " + closed.Failure.Message : ""));
        return e;
    }

    static int TurnOf(object e)
    {
        if (e is AudioEvent) return ((AudioEvent)e).Turn;
        if (e is ReplyEvent) return ((ReplyEvent)e).Turn;
        if (e is TurnEnded) return ((TurnEnded)e).Turn;
        if (e is InterruptedEvent) return ((InterruptedEvent)e).Turn;
        if (e is PauseEvent) return ((PauseEvent)e).Turn;
        return -1;
    }

    // ------------------------------------------------------------ 1. say -> WAV

    static void SayToWav(string wavPath, int rate)
    {
        client.Say("Hello from the Unity harness. Every chunk of this turn goes into a wave file.");
        var samples = new List<short>();
        int turn = -1, nextSeq = 0, chunks = 0;
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var e = Next(10000);
            if (e == null) { Failures.Add("say: no turn_end within 10 s"); break; }
            if (e is ErrorEvent) break;  // recorded by Next; this step cannot complete
            if (turn < 0 && TurnOf(e) >= 0) turn = TurnOf(e);
            var audio = e as AudioEvent;
            if (audio != null)
            {
                Check(audio.Turn == turn, "say: audio of turn " + audio.Turn + " inside turn " + turn);
                Check(audio.Seq == nextSeq, "say: audio seq " + audio.Seq + ", expected " + nextSeq);
                nextSeq = audio.Seq + 1;
                chunks++;
                samples.AddRange(audio.Samples);
                // A real player acks what it has played; here playback starts at the first chunk.
                double receivedMs = samples.Count * 1000.0 / rate;
                client.Played(audio.Turn, Math.Min(receivedMs, clock.Elapsed.TotalMilliseconds));
                continue;
            }
            if (e is InterruptedEvent) { Failures.Add("say: the turn was interrupted"); break; }
            var end = e as TurnEnded;
            if (end != null && end.Turn == turn) break;
        }
        int peak = 0;
        foreach (var s in samples) peak = Math.Max(peak, Math.Abs((int)s));
        Check(chunks > 0, "say: no audio received");
        Check(peak > 1000, "say: the audio is silent (peak " + peak + ")");
        WriteWav(wavPath, samples.ToArray(), rate);
        Console.WriteLine("say: turn " + turn + ", " + chunks + " chunks, " + (samples.Count * 1000 / rate) + " ms, peak " + peak + " -> " + wavPath);
    }

    static void WriteWav(string path, short[] samples, int rate)
    {
        using (var w = new BinaryWriter(File.Create(path)))
        {
            int dataBytes = samples.Length * 2;
            w.Write(new[] { 'R', 'I', 'F', 'F' }); w.Write(36 + dataBytes);
            w.Write(new[] { 'W', 'A', 'V', 'E' });
            w.Write(new[] { 'f', 'm', 't', ' ' }); w.Write(16); w.Write((short)1); w.Write((short)1);
            w.Write(rate); w.Write(rate * 2); w.Write((short)2); w.Write((short)16);
            w.Write(new[] { 'd', 'a', 't', 'a' }); w.Write(dataBytes);
            foreach (var s in samples) w.Write(s); // BinaryWriter writes little-endian
        }
    }

    // ------------------------------------------------------------ 2. text -> streamed reply

    static void TextReply()
    {
        client.SendText("hello from unity");
        int turn = -1;
        bool final = false;
        var text = new System.Text.StringBuilder();
        Console.Write("reply: ");
        while (true)
        {
            var e = Next(10000);
            if (e == null) { Failures.Add("text: no turn_end within 10 s"); break; }
            if (e is ErrorEvent) break;
            if (turn < 0 && TurnOf(e) >= 0) turn = TurnOf(e);
            var reply = e as ReplyEvent;
            if (reply != null)
            {
                Check(!final, "text: a reply delta after the final one");
                Console.Write(reply.Text);
                text.Append(reply.Text);
                if (reply.Final) final = true;
                continue;
            }
            if (e is InterruptedEvent) { Failures.Add("text: the turn was interrupted"); break; }
            var end = e as TurnEnded;
            if (end != null && end.Turn == turn) break;
        }
        Console.WriteLine();
        Check(text.ToString().Trim().Length > 0, "text: empty reply");
        Check(final, "text: no final reply message");
    }

    // ------------------------------------------------------------ 3. interrupt a long say

    static void InterruptLongSay()
    {
        var words = new List<string>();
        for (int i = 0; i < 60; i++) words.Add("word" + i);
        client.Say("This is a long answer that will be cut off. " + string.Join(" ", words) + ".");
        int turn = -1;
        var clock = Stopwatch.StartNew();
        double interruptAt = -1, interruptedAt = -1;
        int audioBefore = 0, audioAfter = 0;
        bool sawEnd = false;
        InterruptedEvent cut = null;
        while (true)
        {
            int wait = cut == null ? 10000 : (int)Math.Max(1, interruptedAt + 1000 - clock.Elapsed.TotalMilliseconds);
            var e = Next(wait);
            if (e == null)
            {
                if (cut == null) Failures.Add("interrupt: no interrupted within 10 s");
                break;  // after interrupted: 1 s of quiet has passed
            }
            if (e is ErrorEvent) break;
            if (turn < 0 && TurnOf(e) >= 0) turn = TurnOf(e);
            if (TurnOf(e) != turn) continue;
            if (e is AudioEvent)
            {
                if (cut != null) audioAfter++;
                else audioBefore++;
                if (interruptAt < 0)
                {
                    client.Interrupt();
                    interruptAt = clock.Elapsed.TotalMilliseconds;
                }
            }
            else if (e is TurnEnded) sawEnd = true;
            else if (e is InterruptedEvent && cut == null)
            {
                cut = (InterruptedEvent)e;
                interruptedAt = clock.Elapsed.TotalMilliseconds;
            }
        }
        Check(cut != null, "interrupt: no interrupted message for turn " + turn);
        Check(audioAfter == 0, "interrupt: " + audioAfter + " audio chunks of turn " + turn + " after interrupted");
        Check(!sawEnd, "interrupt: turn_end for the interrupted turn " + turn);
        if (cut != null)
            Console.WriteLine("interrupt: turn " + turn + ", " + audioBefore + " chunks before, interrupted " +
                              (interruptedAt - interruptAt).ToString("0") + " ms after interrupt, played_ms " + cut.PlayedMs +
                              ", spoken \"" + cut.Text + "\", " + audioAfter + " chunks after");
    }

    // ------------------------------------------------------------ 4. a dropped connection, resumed

    static void DropAndResume()
    {
        var words = new List<string>();
        for (int i = 0; i < 30; i++) words.Add("w" + i);
        client.SendText("a long story " + string.Join(" ", words));
        int turn = -1, chunks = 0;
        double receivedMs = 0;
        var clock = Stopwatch.StartNew();
        while (chunks < 25)
        {
            var e = Next(10000);
            if (e == null) { Failures.Add("drop: no audio of the long turn within 10 s"); return; }
            if (e is ErrorEvent) return;
            if (turn < 0 && TurnOf(e) >= 0) turn = TurnOf(e);
            var audio = e as AudioEvent;
            if (audio == null || audio.Turn != turn) continue;
            chunks++;
            receivedMs += audio.Samples.Length * 1000.0 / audio.Rate;
            client.Played(audio.Turn, Math.Min(receivedMs, clock.Elapsed.TotalMilliseconds));
        }
        Console.WriteLine("drop: turn " + turn + " speaking, " + chunks + " chunks received; waiting for the connection to drop");
        Console.Out.Flush();

        ReconnectedEvent back = null;
        while (back == null)
        {
            var e = Next(15000);
            if (e == null) { Failures.Add("drop: no resume within 15 s"); return; }
            var trying = e as ReconnectingEvent;
            if (trying != null)
                Console.WriteLine("reconnecting: attempt " + trying.Attempt + " after " + trying.DelayMs + " ms (" + trying.Reason + ")");
            back = e as ReconnectedEvent;
        }
        if (back.Resumed)
            Console.WriteLine("resume: resumed session " + back.Session + " (attempt " + back.Attempts + "), last_session_seq " + back.LastSessionSeq +
                              ", handled up to " + back.HandledSeq + ", ready " + back.ReadySeq);
        else
            Console.WriteLine("resume: new session " + back.Session + " (" + back.FailureCode + "), the conversation of " + back.PreviousSession + " is lost");
        Check(client.Connection == ConnectionState.Ready, "drop: connection state " + client.Connection + " after Reconnected");

        client.SendText("after the drop");
        InterruptedEvent cut = null;
        int newTurn = -1;
        var reply = new System.Text.StringBuilder();
        while (true)
        {
            var e = Next(10000);
            if (e == null) { Failures.Add("drop: no answer after the resume within 10 s"); break; }
            if (e is ErrorEvent) break;
            int of = TurnOf(e);
            if (back.Resumed && of == turn)
            {
                var interrupted = e as InterruptedEvent;
                if (interrupted != null) { Check(cut == null, "drop: interrupted of turn " + turn + " handled twice"); cut = interrupted; }
                Check(!(e is AudioEvent), "drop: audio of the cut turn " + turn + " after the resume");
                Check(!(e is TurnEnded), "drop: turn_end of the cut turn " + turn);
                continue;
            }
            if (newTurn < 0 && e is ReplyEvent) newTurn = of;
            if (of != newTurn) continue;
            var r = e as ReplyEvent;
            if (r != null) reply.Append(r.Text);
            if (e is InterruptedEvent) { Failures.Add("drop: the answer after the resume was interrupted"); break; }
            if (e is TurnEnded) break;
        }
        if (back.Resumed)
        {
            Check(cut != null, "drop: no interrupted for the cut turn " + turn + " in the replay");
            if (cut != null) Console.WriteLine("resume: turn " + turn + " cut at " + cut.PlayedMs + " ms, spoken \"" + cut.Text + "\"");
        }
        Console.WriteLine("reply after resume: " + reply.ToString().Trim());
        Console.WriteLine("resume: replayed " + client.ReplayedMessages + ", ignored " + client.IgnoredDuplicates + " already handled");
    }

    // ------------------------------------------------------------ 5. a backchannel over the agent: held, then on

    // network thread: note what had played when the event came (before acting on it), then hold or go on
    static void OnPause(int turn, bool resumed)
    {
        var p = player;
        var e = new PauseEvent { Turn = turn, Resumed = resumed, AtMs = Since.Elapsed.TotalMilliseconds };
        if (p != null)
        {
            e.Played = p.TotalPlayed;
            e.Buffered = p.Buffered;
            if (resumed) p.Resume();
            else p.Pause();
        }
        Events.Add(e);
    }

    // A sound card: pulls 10 ms blocks from the playback on a real-time clock and keeps what it played.
    sealed class SoundCard
    {
        public readonly List<short> Played = new List<short>();
        readonly VoxpipePlayback playback;
        readonly int rate;
        readonly Thread thread;
        readonly AutoResetEvent pulled = new AutoResetEvent(false);
        volatile bool stop;

        public SoundCard(VoxpipePlayback playback, int rate)
        {
            this.playback = playback;
            this.rate = rate;
            thread = new Thread(Run) { IsBackground = true };
            thread.Start();
        }

        void Run()
        {
            var block = new float[rate / 100];
            var clock = Stopwatch.StartNew();
            long frames = 0;
            while (!stop)
            {
                long due = (long)(clock.Elapsed.TotalMilliseconds * rate / 1000);
                for (; frames + block.Length <= due; frames += block.Length)
                {
                    int n = playback.Read(block, 1, 1.0);
                    lock (Played) for (int i = 0; i < n; i++) Played.Add((short)Math.Round(block[i] * 32768f));
                }
                pulled.Set();
                Thread.Sleep(2);   // the device's period; nothing waits on it but the clock
            }
        }

        /// Until `done()` holds after a pull, or `timeoutMs` passed; true when it held.
        public bool WaitFor(Func<bool> done, int timeoutMs)
        {
            var clock = Stopwatch.StartNew();
            while (!done())
            {
                int left = timeoutMs - (int)clock.ElapsedMilliseconds;
                if (left <= 0) return false;
                pulled.WaitOne(left);
            }
            return true;
        }

        public void Stop() { stop = true; thread.Join(); }
    }

    // The mic: `voiceMs` of a 440 Hz tone, then `quietMs` of silence, in 20 ms frames paced to real time.
    static Thread Talk(int voiceMs, int quietMs)
    {
        var thread = new Thread(() =>
        {
            const int rate = 16000, frame = rate / 50;
            int total = (voiceMs + quietMs) * rate / 1000;
            var clock = Stopwatch.StartNew();
            for (int start = 0; start < total; start += frame)
            {
                var samples = new short[Math.Min(frame, total - start)];
                for (int i = 0; i < samples.Length; i++)
                {
                    int n = start + i;
                    if (n < voiceMs * rate / 1000) samples[i] = (short)(0.3 * 32767 * Math.Sin(2 * Math.PI * 440 * n / rate));
                }
                client.SendAudio(samples);
                int dueMs = (start + frame) * 1000 / rate;
                int wait = dueMs - (int)clock.ElapsedMilliseconds;
                if (wait > 0) Thread.Sleep(wait);   // real time: the mic makes 20 ms of audio every 20 ms
            }
        }) { IsBackground = true };
        thread.Start();
        return thread;
    }

    static void PauseAndResume(int rate)
    {
        var playback = new VoxpipePlayback(rate * 10);
        var card = new SoundCard(playback, rate);
        player = playback;
        var words = new List<string>();
        for (int i = 0; i < 40; i++) words.Add("word");
        client.Say(string.Join(" ", words));   // 4 s of agent speech
        Console.WriteLine("pause: say sent");   // progress, so a hang shows where it stopped
        int turn = -1, chunks = 0, interrupted = 0;
        var received = new List<short>();
        PauseEvent paused = null, resumed = null;
        Thread mic = null;
        var lastAck = Stopwatch.StartNew();
        while (true)
        {
            var e = Next(10000);
            if (e == null) { Failures.Add("pause: no turn_end within 10 s"); break; }
            if (e is ErrorEvent) break;
            if (turn < 0 && e is AudioEvent) turn = TurnOf(e);
            if (turn < 0 || TurnOf(e) != turn) continue;   // the user's "yeah" turn: not answered, not played
            var audio = e as AudioEvent;
            if (audio != null)
            {
                received.AddRange(audio.Samples);
                if (++chunks == 30) { mic = Talk(200, 1500); Console.WriteLine("pause: talking over turn " + turn); }   // 600 ms sent, ~400 ms played
            }
            var pe = e as PauseEvent;
            if (pe != null && !pe.Resumed && paused == null) paused = pe;
            if (pe != null && pe.Resumed && resumed == null) resumed = pe;
            if (e is InterruptedEvent) { interrupted++; break; }
            if (e is TurnEnded) break;
            if (lastAck.ElapsedMilliseconds >= 100 && playback.PlayingTurn == turn)
            {
                lastAck.Restart();
                client.Played(turn, playback.PlayedSamples * 1000.0 / rate);
            }
        }
        Console.WriteLine("pause: the turn is over; draining the playback");
        bool drained = card.WaitFor(() => playback.TotalPlayed >= received.Count && playback.Buffered == 0, 10000);
        card.Stop();
        player = null;
        if (mic != null) mic.Join(5000);
        short[] played;
        lock (card.Played) played = card.Played.ToArray();

        Check(paused != null, "pause: no agent_paused for turn " + turn);
        Check(resumed != null, "pause: no agent_resumed for turn " + turn);
        Check(interrupted == 0, "pause: turn " + turn + " was interrupted");
        Check(drained, "pause: the playback did not drain within 10 s of turn_end");
        if (paused != null && resumed != null)
        {
            long whilePaused = resumed.Played - paused.Played;
            Console.WriteLine("pause: turn " + turn + ", paused with " + paused.Played + " samples played and " + paused.Buffered +
                              " buffered, resumed " + (resumed.AtMs - paused.AtMs).ToString("0") + " ms later with " + whilePaused +
                              " played while paused");
            Check(resumed.AtMs > paused.AtMs, "pause: agent_resumed came before agent_paused");
            Check(paused.Buffered > 0, "pause: nothing was buffered at agent_paused (nothing to hold)");
            Check(whilePaused == 0, "pause: " + whilePaused + " samples played while the agent was paused");
        }
        int same = 0;   // how far the samples played match the samples received, one for one
        while (same < played.Length && same < received.Count && played[same] == received[same]) same++;
        bool inOrder = same == played.Length && same == received.Count;
        Console.WriteLine("pause: received " + received.Count + " samples, played " + played.Length + ", in order " + (inOrder ? "yes" : "no"));
        Check(played.Length == received.Count, "pause: " + played.Length + " samples played of " + received.Count + " received");
        Check(inOrder, "pause: the samples played differ from those received from sample " + same);
    }

    static void ReportHandled()
    {
        var seen = new HashSet<string>();
        var nonAudio = new List<string>();   // of the last session
        lock (Handled)
        {
            foreach (var h in Handled)
            {
                Check(seen.Add(h.Item1 + ":" + h.Item2), "a message handled twice: session_seq " + h.Item2 + " of " + h.Item1);
                if (h.Item1 == client.Ready.Session && !h.Item3) nonAudio.Add(h.Item2.ToString());
            }
        }
        Console.WriteLine("handled: " + string.Join(",", nonAudio));
    }
}

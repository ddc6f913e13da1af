// VoxpipeClient: one voxpipe conversation over System.Net.WebSockets.ClientWebSocket (wire contract v1).
// No Unity API here, so it runs in Unity (Mono/IL2CPP), in .NET and under Debian's mono alike.
// Framing: JSON text frames (audio as base64), so no msgpack package is needed.
// Threading: events are raised on the receive thread, never on Unity's main thread; marshal to the main
// thread before touching Unity objects (see Samples/VoxpipeNpc.cs). Sends are queued and written by one
// task (ClientWebSocket allows one send at a time); the queue is bounded and drops the oldest *audio*
// frame when full (DroppedAudioFrames counts them), control messages are never dropped.
// Resume (wire contract, "Resume"): when the socket drops, or the server says going_away, the client
// reconnects on its own (Reconnecting, then Reconnected) with hello.resume and ?session=<id>, backing off
// between attempts; the server replays what was missed, and a message whose session_seq is not above the
// highest handled is ignored (ResumeState). While it is away, audio and played acks are dropped (they would
// be stale), other messages wait in the queue and go after the new ready. A resume the server refuses
// (resume_failed) gives a new session: Reconnected says so (Resumed false), the conversation is lost.
// Agent pause (wire contract, "Agent pause"): AgentPaused means hold playback, keeping the buffer; then
// AgentResumed (play on from there) or Interrupted (flush). VoxpipePlayback does both.
using System;
using System.Collections.Generic;
using System.IO;
using System.Net.WebSockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Voxpipe
{
    public sealed class VoxpipeException : Exception
    {
        public readonly string Code;
        public readonly int? CloseCode;      // the close frame's code, when the server closed
        public VoxpipeException(string code, string message, int? closeCode = null) : base(code + ": " + message)
        {
            Code = code;
            CloseCode = closeCode;
        }
    }

    public enum ConnectionState { Disconnected, Connecting, Ready, Reconnecting, Closed }

    public sealed class VoxpipeOptions
    {
        public int InputRate = 16000;        // rate of SendAudio samples: 8000/16000/24000/48000
        public int OutputRate = 16000;       // rate of the agent's audio
        public bool? Aec = null;             // false: the mic hears the speakers (server-side echo guard on)
        public string Token = null;
        public string SystemPrompt = null;
        public string Voice = null;
        public string Language = null;
        public string[] Subscribe = null;    // stage names whose output you want; null = all
        public int SendQueueFrames = 256;    // ~5 s of 20 ms audio frames
        public int ConnectTimeoutMs = 10000;
        // Resume after a drop: attempt 1 at once, then ResumeInitialDelayMs doubling up to ResumeMaxDelayMs
        // (jittered to 50-100 %); after ResumeMaxAttempts (30-60 s of trying with these values, as long as the
        // server's 30 s session.resume_grace_s: past it a resume gives a new session) it gives up: Closed.
        public bool AutoResume = true;
        public int ResumeInitialDelayMs = 250;
        public int ResumeMaxDelayMs = 5000;
        public int ResumeMaxAttempts = 16;
        public int ResumeRewindMessages = 0; // tests only: ask for this many already-handled messages again
    }

    public sealed class StageInfo
    {
        public string Name, Engine, In, Out;
    }

    public sealed class ReadyInfo
    {
        public string Session;
        public string ResumeToken;           // null when the server has resume off
        public bool Resumed;                 // true: the session of hello.resume, picked up where it was
        public int Protocol, InputRate, OutputRate;
        public List<StageInfo> Graph = new List<StageInfo>();
    }

    public sealed class TranscriptEvent { public string Stage; public int Turn; public string Text; public bool Final; }
    public sealed class ReplyEvent { public string Stage; public int Turn; public string Text; public bool Final; }
    public sealed class AudioEvent { public string Stage; public int Turn; public int Seq; public short[] Samples; public int Rate; }
    public sealed class InterruptedEvent { public int Turn; public double PlayedMs; public string Text; }
    public sealed class ErrorEvent { public string Code; public string Message; public bool Fatal; public int? Turn; }
    public sealed class VadEvent { public string Stage; public int Turn; public string Event; }
    public sealed class ReconnectingEvent { public int Attempt; public int DelayMs; public string Reason; }
    public sealed class ReconnectedEvent
    {
        public bool Resumed;                 // false: a new session (FailureCode says why); the history is gone
        public string Session, PreviousSession, FailureCode;
        public int Attempts;
        public long LastSessionSeq;          // what the resume hello said it had handled
        public long HandledSeq;              // the highest session_seq handled before the drop
        public long ReadySeq;                // the resumed ready's session_seq: the replay is numbered below it
    }

    public sealed class VoxpipeClient : IDisposable
    {
        public event Action<TranscriptEvent> Transcript;
        public event Action<ReplyEvent> Reply;
        public event Action<AudioEvent> Audio;
        public event Action<InterruptedEvent> Interrupted;
        public event Action<int> TurnEnd;
        public event Action<int> AgentPaused;                       // voice over the agent (turn): hold playback,
                                                                    // keeping the buffer, while the words decide
        public event Action<int> AgentResumed;                      // a backchannel or no words (turn): play on
                                                                    // from where it was held; nothing was cut
        public event Action<ErrorEvent> Error;                      // going_away and resume_failed are not raised
                                                                    // here: they become Reconnecting / Reconnected
        public event Action<VadEvent> Vad;
        public event Action<Dictionary<string, object>> Metrics;
        public event Action<Dictionary<string, object>> Message;   // every server message, raw, before the typed event
        public event Action<ReconnectingEvent> Reconnecting;        // the socket went; a resume attempt follows
        public event Action<ReconnectedEvent> Reconnected;          // back: resumed, or a new session
        public event Action<Exception> Closed;                      // for good; null: closed cleanly

        readonly VoxpipeOptions options;
        readonly CancellationTokenSource stop = new CancellationTokenSource();
        readonly LinkedList<Outgoing> sendQueue = new LinkedList<Outgoing>();
        readonly SemaphoreSlim sendSignal = new SemaphoreSlim(0);
        readonly ResumeState resume = new ResumeState();
        readonly Random random = new Random();
        ClientWebSocket socket;              // the current connection's
        Uri url;
        Task runTask;
        volatile ConnectionState connection = ConnectionState.Disconnected;
        volatile bool closing;
        int droppedAudioFrames;
        int closedRaised;

        struct Outgoing { public byte[] Utf8; public bool IsAudio; public bool LiveOnly; }

        sealed class Opened
        {
            public ClientWebSocket Socket;
            public Dictionary<string, object> Ready;
            public List<Dictionary<string, object>> Before = new List<Dictionary<string, object>>();
        }

        sealed class Ending
        {
            public int? CloseCode;           // null: no close frame (the socket just went)
            public string FatalCode;         // a fatal error's code received before the end
            public Exception Failure;
            public string Reason;
        }

        public VoxpipeClient(VoxpipeOptions options = null)
        {
            this.options = options ?? new VoxpipeOptions();
        }

        public ReadyInfo Ready { get; private set; }
        public int DroppedAudioFrames { get { return droppedAudioFrames; } }
        public ConnectionState Connection { get { return connection; } }
        public WebSocketState State { get { var s = socket; return s != null ? s.State : WebSocketState.None; } }
        public long LastSessionSeq { get { return resume.LastSeq; } }
        public int ReplayedMessages { get { return resume.Replayed; } }
        public int IgnoredDuplicates { get { return resume.IgnoredDuplicates; } }

        // ------------------------------------------------------------ connect

        /// Connects, sends hello and waits for ready; then runs the connection (and its resumes) in the background.
        /// A first connection that fails throws: there is no conversation to resume yet.
        public async Task<ReadyInfo> ConnectAsync(Uri url, CancellationToken cancel = default(CancellationToken))
        {
            this.url = url;
            connection = ConnectionState.Connecting;
            Opened opened;
            try
            {
                opened = await OpenAsync(url, BuildHello(null), cancel).ConfigureAwait(false);
            }
            catch
            {
                connection = ConnectionState.Closed;
                throw;
            }
            Adopt(opened);
            DispatchBefore(opened);
            runTask = Task.Run(() => RunAsync(opened.Socket));
            return Ready;
        }

        /// One socket: connect, hello, and the messages up to ready (throws when there is no ready).
        async Task<Opened> OpenAsync(Uri target, Dictionary<string, object> hello, CancellationToken cancel)
        {
            var ws = new ClientWebSocket();
            try
            {
                using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancel, stop.Token))
                {
                    timeout.CancelAfter(options.ConnectTimeoutMs);
                    await ws.ConnectAsync(target, timeout.Token).ConfigureAwait(false);
                    byte[] bytes = Encoding.UTF8.GetBytes(MiniJson.Serialize(hello));
                    await ws.SendAsync(new ArraySegment<byte>(bytes), WebSocketMessageType.Text, true, timeout.Token)
                        .ConfigureAwait(false);
                    var opened = new Opened { Socket = ws };
                    while (true)
                    {
                        var msg = await ReceiveMessageAsync(ws, timeout.Token).ConfigureAwait(false);
                        if (msg == null)
                            throw new VoxpipeException("closed", "the server closed before ready", (int?)ws.CloseStatus);
                        string type = Str(msg, "type");
                        if (type == "ready") { opened.Ready = msg; return opened; }
                        if (type == "error" && Bool(msg, "fatal"))
                            throw new VoxpipeException(Str(msg, "code"), Str(msg, "message"));
                        opened.Before.Add(msg);   // a refused resume's resume_failed comes before the new ready
                    }
                }
            }
            catch
            {
                ws.Dispose();
                throw;
            }
        }

        /// Take an opened socket as the current connection; true when it resumed the conversation.
        bool Adopt(Opened opened)
        {
            bool resumed = resume.OnReady(opened.Ready);
            Ready = ParseReady(opened.Ready);
            socket = opened.Socket;
            connection = ConnectionState.Ready;
            return resumed;
        }

        /// The messages that came before ready (a refused resume's resume_failed), numbered in the new session.
        void DispatchBefore(Opened opened)
        {
            foreach (var msg in opened.Before)
                if (resume.Accept(msg)) Dispatch(msg);
        }

        Dictionary<string, object> BuildHello(Dictionary<string, object> resumeRequest)
        {
            var audioIn = new Dictionary<string, object> { { "format", "pcm16" }, { "rate", options.InputRate }, { "channels", 1 } };
            if (options.Aec.HasValue) audioIn["aec"] = options.Aec.Value;
            var hello = new Dictionary<string, object>
            {
                { "type", "hello" }, { "protocol", 1 }, { "audio_in", audioIn },
                { "audio_out", new Dictionary<string, object> { { "format", "pcm16" }, { "rate", options.OutputRate } } },
            };
            if (options.Token != null) hello["token"] = options.Token;
            if (options.Subscribe != null) hello["subscribe"] = new List<object>(options.Subscribe);
            var session = new Dictionary<string, object>();
            if (options.SystemPrompt != null) session["system_prompt"] = options.SystemPrompt;
            if (options.Voice != null) session["voice"] = options.Voice;
            if (options.Language != null) session["language"] = options.Language;
            if (session.Count > 0) hello["session"] = session;
            if (resumeRequest != null) hello["resume"] = resumeRequest;
            return hello;
        }

        static ReadyInfo ParseReady(Dictionary<string, object> msg)
        {
            var ready = new ReadyInfo
            {
                Session = Str(msg, "session"), ResumeToken = Str(msg, "resume_token"), Resumed = Bool(msg, "resumed"),
                Protocol = Int(msg, "protocol"),
            };
            var audioIn = msg.ContainsKey("audio_in") ? msg["audio_in"] as Dictionary<string, object> : null;
            var audioOut = msg.ContainsKey("audio_out") ? msg["audio_out"] as Dictionary<string, object> : null;
            ready.InputRate = audioIn != null ? Int(audioIn, "rate") : 0;
            ready.OutputRate = audioOut != null ? Int(audioOut, "rate") : 0;
            var graph = msg.ContainsKey("graph") ? msg["graph"] as List<object> : null;
            if (graph != null)
                foreach (var node in graph)
                {
                    var n = node as Dictionary<string, object>;
                    if (n != null)
                        ready.Graph.Add(new StageInfo { Name = Str(n, "name"), Engine = Str(n, "engine"), In = Str(n, "in"), Out = Str(n, "out") });
                }
            return ready;
        }

        // ------------------------------------------------------------ the connection, and its resumes

        async Task RunAsync(ClientWebSocket current)
        {
            while (true)
            {
                var end = await ServeAsync(current).ConfigureAwait(false);
                current.Dispose();
                if (closing || !options.AutoResume || ResumeState.EndsForGood(end.CloseCode, end.FatalCode))
                {
                    Finish(closing ? null : end.Failure);
                    return;
                }
                connection = ConnectionState.Reconnecting;
                DropLiveOnlyQueued();
                current = await ResumeAsync(end.Reason).ConfigureAwait(false);
                if (current == null) return;   // Finish was called
            }
        }

        /// Runs one socket's receive and send loops until it ends; says how it ended.
        async Task<Ending> ServeAsync(ClientWebSocket ws)
        {
            using (var connStop = CancellationTokenSource.CreateLinkedTokenSource(stop.Token))
            {
                var sender = Task.Run(() => SendLoop(ws, connStop.Token));
                var end = await ReceiveLoop(ws, connStop.Token).ConfigureAwait(false);
                connStop.Cancel();
                try { await sender.ConfigureAwait(false); } catch (Exception) { /* the socket is gone either way */ }
                return end;
            }
        }

        async Task<Ending> ReceiveLoop(ClientWebSocket ws, CancellationToken cancel)
        {
            var end = new Ending();
            try
            {
                while (true)
                {
                    var msg = await ReceiveMessageAsync(ws, cancel).ConfigureAwait(false);
                    if (msg == null)
                    {
                        end.CloseCode = (int?)ws.CloseStatus;
                        end.Reason = "closed " + end.CloseCode + (end.FatalCode != null ? " after " + end.FatalCode : "");
                        await AnswerClose(ws).ConfigureAwait(false);
                        return end;
                    }
                    if (!resume.Accept(msg)) continue;   // already handled (a replay overlapping what we had)
                    if (Str(msg, "type") == "error" && Bool(msg, "fatal"))
                    {
                        end.FatalCode = Str(msg, "code");
                        if (!ResumeState.EndsForGood(null, end.FatalCode)) { RaiseMessage(msg); continue; }  // going_away
                        end.Failure = new VoxpipeException(end.FatalCode, Str(msg, "message"));
                    }
                    Dispatch(msg);
                }
            }
            catch (OperationCanceledException) { end.Reason = "stopped"; }
            catch (Exception exc)
            {
                end.Failure = exc;
                end.Reason = "connection lost: " + exc.Message;
            }
            return end;
        }

        static async Task AnswerClose(ClientWebSocket ws)
        {
            try
            {
                if (ws.State == WebSocketState.CloseReceived)
                    using (var timeout = new CancellationTokenSource(1000))
                        await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", timeout.Token).ConfigureAwait(false);
            }
            catch (Exception) { /* closing anyway */ }
        }

        /// Reconnect with hello.resume until a ready comes (the new socket), or give up (null, Closed raised).
        async Task<ClientWebSocket> ResumeAsync(string reason)
        {
            string previous = resume.Session;
            long handledSeq = resume.LastSeq;
            Exception last = null;
            for (int attempt = 1; attempt <= options.ResumeMaxAttempts; attempt++)
            {
                int delayMs = ResumeState.BackoffMs(attempt, options.ResumeInitialDelayMs, options.ResumeMaxDelayMs, random);
                var reconnecting = Reconnecting;
                if (reconnecting != null) reconnecting(new ReconnectingEvent { Attempt = attempt, DelayMs = delayMs, Reason = reason });
                try
                {
                    if (delayMs > 0) await Task.Delay(delayMs, stop.Token).ConfigureAwait(false);
                    var request = resume.CanResume ? resume.ResumeRequest(options.ResumeRewindMessages) : null;
                    var target = resume.Session != null ? resume.ResumeUrl(url) : url;
                    var opened = await OpenAsync(target, BuildHello(request), CancellationToken.None).ConfigureAwait(false);
                    bool failedResume = false;
                    foreach (var msg in opened.Before)
                        failedResume |= Str(msg, "type") == "error" && Str(msg, "code") == "resume_failed";
                    bool resumed = Adopt(opened);
                    var reconnected = Reconnected;
                    if (reconnected != null)
                        reconnected(new ReconnectedEvent
                        {
                            Resumed = resumed, Session = Ready.Session, PreviousSession = previous, Attempts = attempt,
                            LastSessionSeq = request != null ? (long)request["last_session_seq"] : 0, HandledSeq = handledSeq,
                            ReadySeq = resume.ReplayBeforeSeq,
                            FailureCode = resumed ? null : (failedResume ? "resume_failed" : request == null ? "resume_off" : "not_resumed"),
                        });
                    DispatchBefore(opened);
                    return opened.Socket;
                }
                catch (OperationCanceledException) when (stop.IsCancellationRequested)
                {
                    Finish(null);   // CloseAsync or Dispose while reconnecting
                    return null;
                }
                catch (VoxpipeException exc) when (ResumeState.EndsForGood(exc.CloseCode, exc.Code == "closed" ? null : exc.Code))
                {
                    Finish(exc);   // refused for good (unauthorized, a bad hello): trying again would not help
                    return null;
                }
                catch (Exception exc)
                {
                    last = exc;
                    reason = "attempt " + attempt + " failed: " + exc.Message;
                }
            }
            Finish(new VoxpipeException("resume_gave_up", "no resume after " + options.ResumeMaxAttempts + " attempts" +
                                        (last != null ? ": " + last.Message : "")));
            return null;
        }

        void Finish(Exception failure)
        {
            connection = ConnectionState.Closed;
            RaiseClosed(failure);
        }

        // ------------------------------------------------------------ sending

        /// Mic audio: PCM16 mono at options.InputRate, best sent in 10-40 ms frames.
        public void SendAudio(short[] samples) { SendAudio(samples, 0, samples.Length); }

        public void SendAudio(short[] samples, int offset, int count)
        {
            if (count <= 0) return;
            var bytes = new byte[count * 2];
            Buffer.BlockCopy(samples, offset * 2, bytes, 0, count * 2);
            if (!BitConverter.IsLittleEndian)
                for (int i = 0; i < bytes.Length; i += 2) { byte t = bytes[i]; bytes[i] = bytes[i + 1]; bytes[i + 1] = t; }
            Enqueue("{\"type\":\"audio\",\"data\":\"" + Convert.ToBase64String(bytes) + "\"}", true, true);
        }

        /// A user message for the LLM (ASR skipped).
        public void SendText(string text) { SendMap("text", "text", text); }

        /// The agent speaks exactly this text (LLM skipped).
        public void Say(string text) { SendMap("say", "text", text); }

        /// Stop the agent's current turn now.
        public void Interrupt() { SendMap("interrupt", null, null); }

        /// Push-to-talk: the user's utterance ends now.
        public void Commit() { SendMap("commit", null, null); }

        /// The client has actually played `ms` of `turn`'s audio (lets the server cut history precisely).
        public void Played(int turn, double ms)
        {
            Enqueue(MiniJson.Serialize(new Dictionary<string, object> { { "type", "played" }, { "turn", turn }, { "ms", Math.Round(ms, 1) } }), false, true);
        }

        public void Ping(object id = null)
        {
            var map = new Dictionary<string, object> { { "type", "ping" } };
            if (id != null) map["id"] = id;
            Enqueue(MiniJson.Serialize(map), false, false);
        }

        void SendMap(string type, string key, string value)
        {
            var map = new Dictionary<string, object> { { "type", type } };
            if (key != null) map[key] = value;
            Enqueue(MiniJson.Serialize(map), false, false);
        }

        /// liveOnly: meaningless once the socket dropped (audio, played acks): not kept while reconnecting.
        void Enqueue(string json, bool isAudio, bool liveOnly)
        {
            if (Ready == null) throw new InvalidOperationException("call ConnectAsync first");
            if (liveOnly && connection != ConnectionState.Ready)
            {
                if (isAudio) Interlocked.Increment(ref droppedAudioFrames);
                return;
            }
            var item = new Outgoing { Utf8 = Encoding.UTF8.GetBytes(json), IsAudio = isAudio, LiveOnly = liveOnly };
            lock (sendQueue)
            {
                if (isAudio && sendQueue.Count >= options.SendQueueFrames)
                {
                    // Overflow policy: drop the oldest queued audio frame; control messages always go.
                    for (var node = sendQueue.First; node != null; node = node.Next)
                        if (node.Value.IsAudio) { sendQueue.Remove(node); Interlocked.Increment(ref droppedAudioFrames); break; }
                }
                sendQueue.AddLast(item);
            }
            sendSignal.Release();
        }

        void DropLiveOnlyQueued()
        {
            lock (sendQueue)
            {
                for (var node = sendQueue.First; node != null;)
                {
                    var next = node.Next;
                    if (node.Value.LiveOnly)
                    {
                        if (node.Value.IsAudio) Interlocked.Increment(ref droppedAudioFrames);
                        sendQueue.Remove(node);
                    }
                    node = next;
                }
            }
        }

        async Task SendLoop(ClientWebSocket ws, CancellationToken cancel)
        {
            try
            {
                while (true)
                {
                    await sendSignal.WaitAsync(cancel).ConfigureAwait(false);
                    Outgoing item;
                    lock (sendQueue)
                    {
                        if (sendQueue.Count == 0) continue;
                        item = sendQueue.First.Value;
                        sendQueue.RemoveFirst();
                    }
                    await ws.SendAsync(new ArraySegment<byte>(item.Utf8), WebSocketMessageType.Text, true, cancel)
                        .ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) { }
            catch (Exception) { ws.Abort(); }   // the receive loop sees the end and decides: resume or close
        }

        /// Waits until every queued message has been handed to the socket (or `timeoutMs` passed).
        public async Task FlushAsync(int timeoutMs = 5000)
        {
            var deadline = DateTime.UtcNow.AddMilliseconds(timeoutMs);
            while (DateTime.UtcNow < deadline)
            {
                lock (sendQueue) { if (sendQueue.Count == 0 && sendSignal.CurrentCount == 0) return; }
                await Task.Delay(5).ConfigureAwait(false);
            }
        }

        // ------------------------------------------------------------ receiving

        static async Task<Dictionary<string, object>> ReceiveMessageAsync(ClientWebSocket ws, CancellationToken cancel)
        {
            var buffer = new byte[64 * 1024];
            using (var frame = new MemoryStream())
            {
                while (true)
                {
                    var result = await ws.ReceiveAsync(new ArraySegment<byte>(buffer), cancel).ConfigureAwait(false);
                    if (result.MessageType == WebSocketMessageType.Close) return null;
                    frame.Write(buffer, 0, result.Count);
                    if (!result.EndOfMessage) continue;
                    if (result.MessageType == WebSocketMessageType.Binary)
                        throw new VoxpipeException("bad_frame", "binary (msgpack) frame received; this client speaks JSON");
                    var map = MiniJson.Parse(Encoding.UTF8.GetString(frame.GetBuffer(), 0, (int)frame.Length)) as Dictionary<string, object>;
                    if (map == null) throw new VoxpipeException("bad_message", "a server message that is not a JSON object");
                    return map;
                }
            }
        }

        void RaiseMessage(Dictionary<string, object> msg)
        {
            var raw = Message;
            if (raw != null) raw(msg);
        }

        void Dispatch(Dictionary<string, object> msg)
        {
            RaiseMessage(msg);
            switch (Str(msg, "type"))
            {
                case "audio":
                    var audio = Audio;
                    if (audio != null)
                        audio(new AudioEvent { Stage = Str(msg, "stage"), Turn = Int(msg, "turn"), Seq = Int(msg, "seq"),
                                               Samples = DecodePcm(Str(msg, "data")), Rate = Ready.OutputRate });
                    break;
                case "transcript":
                    var transcript = Transcript;
                    if (transcript != null)
                        transcript(new TranscriptEvent { Stage = Str(msg, "stage"), Turn = Int(msg, "turn"), Text = Str(msg, "text"), Final = Bool(msg, "final") });
                    break;
                case "reply":
                    var reply = Reply;
                    if (reply != null)
                        reply(new ReplyEvent { Stage = Str(msg, "stage"), Turn = Int(msg, "turn"), Text = Str(msg, "text"), Final = Bool(msg, "final") });
                    break;
                case "interrupted":
                    var interrupted = Interrupted;
                    if (interrupted != null)
                        interrupted(new InterruptedEvent { Turn = Int(msg, "turn"), PlayedMs = Dbl(msg, "played_ms"), Text = Str(msg, "text") });
                    break;
                case "turn_end":
                    var turnEnd = TurnEnd;
                    if (turnEnd != null) turnEnd(Int(msg, "turn"));
                    break;
                case "agent_paused":
                    var agentPaused = AgentPaused;
                    if (agentPaused != null) agentPaused(Int(msg, "turn"));
                    break;
                case "agent_resumed":
                    var agentResumed = AgentResumed;
                    if (agentResumed != null) agentResumed(Int(msg, "turn"));
                    break;
                case "error":
                    var error = Error;
                    if (error != null && Str(msg, "code") != "resume_failed")
                        error(new ErrorEvent { Code = Str(msg, "code"), Message = Str(msg, "message"), Fatal = Bool(msg, "fatal"),
                                               Turn = msg.ContainsKey("turn") && msg["turn"] != null ? (int?)Int(msg, "turn") : null });
                    break;
                case "vad":
                    var vad = Vad;
                    if (vad != null) vad(new VadEvent { Stage = Str(msg, "stage"), Turn = Int(msg, "turn"), Event = Str(msg, "event") });
                    break;
                case "metrics":
                    var metrics = Metrics;
                    if (metrics != null) metrics(msg);
                    break;
            }
        }

        public static short[] DecodePcm(string base64)
        {
            if (string.IsNullOrEmpty(base64)) return new short[0];
            byte[] bytes = Convert.FromBase64String(base64);
            if (!BitConverter.IsLittleEndian)
                for (int i = 0; i + 1 < bytes.Length; i += 2) { byte t = bytes[i]; bytes[i] = bytes[i + 1]; bytes[i + 1] = t; }
            var samples = new short[bytes.Length / 2];
            Buffer.BlockCopy(bytes, 0, samples, 0, samples.Length * 2);
            return samples;
        }

        void RaiseClosed(Exception failure)
        {
            if (Interlocked.Exchange(ref closedRaised, 1) != 0) return;
            var closed = Closed;
            if (closed != null) closed(failure);
        }

        // ------------------------------------------------------------ closing

        /// Says bye (the server closes with 1000, and the session ends for good), then stops; waits up to
        /// `timeoutMs`. While reconnecting, stops the attempts.
        public async Task CloseAsync(int timeoutMs = 3000)
        {
            closing = true;
            if (connection == ConnectionState.Ready && Ready != null)
            {
                SendMap("bye", null, null);
                await FlushAsync(timeoutMs).ConfigureAwait(false);
                if (runTask != null) await Task.WhenAny(runTask, Task.Delay(timeoutMs)).ConfigureAwait(false);
            }
            stop.Cancel();
            if (runTask != null) await Task.WhenAny(runTask, Task.Delay(timeoutMs)).ConfigureAwait(false);
            connection = ConnectionState.Closed;
        }

        public void Dispose()
        {
            closing = true;
            stop.Cancel();
            var s = socket;
            if (s != null) s.Dispose();
        }

        // ------------------------------------------------------------ map access

        static string Str(Dictionary<string, object> m, string key)
        {
            object v;
            return m.TryGetValue(key, out v) ? v as string : null;
        }

        static int Int(Dictionary<string, object> m, string key)
        {
            object v;
            if (!m.TryGetValue(key, out v) || v == null) return 0;
            if (v is long) return (int)(long)v;
            if (v is double) return (int)(double)v;
            return 0;
        }

        static double Dbl(Dictionary<string, object> m, string key)
        {
            object v;
            if (!m.TryGetValue(key, out v) || v == null) return 0;
            if (v is long) return (long)v;
            if (v is double) return (double)v;
            return 0;
        }

        static bool Bool(Dictionary<string, object> m, string key)
        {
            object v;
            return m.TryGetValue(key, out v) && v is bool && (bool)v;
        }
    }
}

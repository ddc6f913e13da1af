// VoxpipeClient: one voxpipe conversation over System.Net.WebSockets.ClientWebSocket (wire contract v1).
// No Unity API here, so it runs in Unity (Mono/IL2CPP), in .NET and under Debian's mono alike.
// Framing: JSON text frames (audio as base64), so no msgpack package is needed.
// Threading: events are raised on the receive thread, never on Unity's main thread; marshal to the main
// thread before touching Unity objects (see Samples/VoxpipeNpc.cs). Sends are queued and written by one
// task (ClientWebSocket allows one send at a time); the queue is bounded and drops the oldest *audio*
// frame when full (DroppedAudioFrames counts them), control messages are never dropped.
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
        public VoxpipeException(string code, string message) : base(code + ": " + message) { Code = code; }
    }

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
    }

    public sealed class StageInfo
    {
        public string Name, Engine, In, Out;
    }

    public sealed class ReadyInfo
    {
        public string Session;
        public int Protocol, InputRate, OutputRate;
        public List<StageInfo> Graph = new List<StageInfo>();
    }

    public sealed class TranscriptEvent { public string Stage; public int Turn; public string Text; public bool Final; }
    public sealed class ReplyEvent { public string Stage; public int Turn; public string Text; public bool Final; }
    public sealed class AudioEvent { public string Stage; public int Turn; public int Seq; public short[] Samples; public int Rate; }
    public sealed class InterruptedEvent { public int Turn; public double PlayedMs; public string Text; }
    public sealed class ErrorEvent { public string Code; public string Message; public bool Fatal; public int? Turn; }
    public sealed class VadEvent { public string Stage; public int Turn; public string Event; }

    public sealed class VoxpipeClient : IDisposable
    {
        public event Action<TranscriptEvent> Transcript;
        public event Action<ReplyEvent> Reply;
        public event Action<AudioEvent> Audio;
        public event Action<InterruptedEvent> Interrupted;
        public event Action<int> TurnEnd;
        public event Action<ErrorEvent> Error;
        public event Action<VadEvent> Vad;
        public event Action<Dictionary<string, object>> Metrics;
        public event Action<Dictionary<string, object>> Message;   // every server message, raw, before the typed event
        public event Action<Exception> Closed;                      // null: closed cleanly

        readonly VoxpipeOptions options;
        readonly ClientWebSocket socket = new ClientWebSocket();
        readonly CancellationTokenSource stop = new CancellationTokenSource();
        readonly LinkedList<Outgoing> sendQueue = new LinkedList<Outgoing>();
        readonly SemaphoreSlim sendSignal = new SemaphoreSlim(0);
        Task receiveTask, sendTask;
        int droppedAudioFrames;
        int closedRaised;

        struct Outgoing { public byte[] Utf8; public bool IsAudio; }

        public VoxpipeClient(VoxpipeOptions options = null)
        {
            this.options = options ?? new VoxpipeOptions();
        }

        public ReadyInfo Ready { get; private set; }
        public int DroppedAudioFrames { get { return droppedAudioFrames; } }
        public WebSocketState State { get { return socket.State; } }

        // ------------------------------------------------------------ connect

        /// Connects, sends hello and waits for ready; then starts the receive and send loops.
        public async Task<ReadyInfo> ConnectAsync(Uri url, CancellationToken cancel = default(CancellationToken))
        {
            using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancel, stop.Token))
            {
                timeout.CancelAfter(options.ConnectTimeoutMs);
                await socket.ConnectAsync(url, timeout.Token).ConfigureAwait(false);
                byte[] hello = Encoding.UTF8.GetBytes(MiniJson.Serialize(BuildHello()));
                await socket.SendAsync(new ArraySegment<byte>(hello), WebSocketMessageType.Text, true, timeout.Token)
                    .ConfigureAwait(false);
                while (true)
                {
                    var msg = await ReceiveMessageAsync(timeout.Token).ConfigureAwait(false);
                    if (msg == null) throw new VoxpipeException("closed", "the server closed before ready");
                    string type = Str(msg, "type");
                    if (type == "ready") { Ready = ParseReady(msg); break; }
                    if (type == "error" && Bool(msg, "fatal"))
                        throw new VoxpipeException(Str(msg, "code"), Str(msg, "message"));
                }
            }
            receiveTask = Task.Run(ReceiveLoop);
            sendTask = Task.Run(SendLoop);
            return Ready;
        }

        Dictionary<string, object> BuildHello()
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
            return hello;
        }

        static ReadyInfo ParseReady(Dictionary<string, object> msg)
        {
            var ready = new ReadyInfo { Session = Str(msg, "session"), Protocol = Int(msg, "protocol") };
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
            Enqueue("{\"type\":\"audio\",\"data\":\"" + Convert.ToBase64String(bytes) + "\"}", true);
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
            Enqueue(MiniJson.Serialize(new Dictionary<string, object> { { "type", "played" }, { "turn", turn }, { "ms", Math.Round(ms, 1) } }), false);
        }

        public void Ping(object id = null)
        {
            var map = new Dictionary<string, object> { { "type", "ping" } };
            if (id != null) map["id"] = id;
            Enqueue(MiniJson.Serialize(map), false);
        }

        void SendMap(string type, string key, string value)
        {
            var map = new Dictionary<string, object> { { "type", type } };
            if (key != null) map[key] = value;
            Enqueue(MiniJson.Serialize(map), false);
        }

        void Enqueue(string json, bool isAudio)
        {
            if (Ready == null) throw new InvalidOperationException("call ConnectAsync first");
            var item = new Outgoing { Utf8 = Encoding.UTF8.GetBytes(json), IsAudio = isAudio };
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

        async Task SendLoop()
        {
            try
            {
                while (true)
                {
                    await sendSignal.WaitAsync(stop.Token).ConfigureAwait(false);
                    Outgoing item;
                    lock (sendQueue)
                    {
                        if (sendQueue.Count == 0) continue;
                        item = sendQueue.First.Value;
                        sendQueue.RemoveFirst();
                    }
                    await socket.SendAsync(new ArraySegment<byte>(item.Utf8), WebSocketMessageType.Text, true, stop.Token)
                        .ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) { }
            catch (Exception exc) { RaiseClosed(exc); }
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

        async Task<Dictionary<string, object>> ReceiveMessageAsync(CancellationToken cancel)
        {
            var buffer = new byte[64 * 1024];
            using (var frame = new MemoryStream())
            {
                while (true)
                {
                    var result = await socket.ReceiveAsync(new ArraySegment<byte>(buffer), cancel).ConfigureAwait(false);
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

        async Task ReceiveLoop()
        {
            Exception failure = null;
            try
            {
                while (true)
                {
                    var msg = await ReceiveMessageAsync(stop.Token).ConfigureAwait(false);
                    if (msg == null) break;
                    Dispatch(msg);
                }
            }
            catch (OperationCanceledException) { }
            catch (Exception exc) { failure = exc; }
            RaiseClosed(failure);
        }

        void Dispatch(Dictionary<string, object> msg)
        {
            var raw = Message;
            if (raw != null) raw(msg);
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
                case "error":
                    var error = Error;
                    if (error != null)
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

        /// Says bye (the server closes with 1000), then closes the socket; waits up to `timeoutMs`.
        public async Task CloseAsync(int timeoutMs = 3000)
        {
            if (socket.State == WebSocketState.Open && Ready != null)
            {
                SendMap("bye", null, null);
                await FlushAsync(timeoutMs).ConfigureAwait(false);
                if (receiveTask != null) await Task.WhenAny(receiveTask, Task.Delay(timeoutMs)).ConfigureAwait(false);
            }
            try
            {
                if (socket.State == WebSocketState.Open || socket.State == WebSocketState.CloseReceived)
                    using (var timeout = new CancellationTokenSource(timeoutMs))
                        await socket.CloseAsync(WebSocketCloseStatus.NormalClosure, "bye", timeout.Token).ConfigureAwait(false);
            }
            catch (Exception) { /* the socket is going away either way */ }
            stop.Cancel();
            if (sendTask != null) await Task.WhenAny(sendTask, Task.Delay(timeoutMs)).ConfigureAwait(false);
        }

        public void Dispose()
        {
            stop.Cancel();
            socket.Dispose();
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

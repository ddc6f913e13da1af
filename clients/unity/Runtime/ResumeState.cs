// ResumeState: what a resume needs and decides, with no I/O (wire contract, "Resume"), so VoxpipeClient's
// loop stays small and the rules are in one place:
// - the session, its resume token, and the highest session_seq handled (ready's own number aside: on a
//   resume it comes before the replay's older numbers);
// - which messages are duplicates (session_seq not above the highest handled: ignored, counted);
// - the resume hello and URL (?session=<id>, for load balancers to hash on);
// - which ends are for good (bye, auth, protocol errors, a takeover) and which are worth a resume;
// - the backoff between attempts (exponential with a cap, jittered so clients of a dead worker spread out).
// Not thread-safe: VoxpipeClient calls it from one thread at a time (the receive loop, or the reconnect
// loop while no receive loop runs).
using System;
using System.Collections.Generic;

namespace Voxpipe
{
    public sealed class ResumeState
    {
        public string Session { get; private set; }
        public string Token { get; private set; }            // null: the server has resume off
        public long LastSeq { get; private set; }             // highest session_seq handled (ready aside)
        public long ReplayBeforeSeq { get; private set; }     // a resumed ready's number: the replay comes below it
        public int Replayed { get; private set; }             // messages handled from replays
        public int IgnoredDuplicates { get; private set; }    // messages not above LastSeq: already handled

        /// A ready arrived. Returns true when it resumed the known session (history and numbering go on);
        /// false for a new session, whose numbering starts again.
        public bool OnReady(Dictionary<string, object> ready)
        {
            string session = ready.ContainsKey("session") ? ready["session"] as string : null;
            bool resumed = Session != null && session == Session && ready.ContainsKey("resumed") && ready["resumed"] is bool && (bool)ready["resumed"];
            if (!resumed) LastSeq = 0;
            Session = session;
            Token = ready.ContainsKey("resume_token") ? ready["resume_token"] as string : null;
            long seq;
            ReplayBeforeSeq = resumed && TrySeq(ready, out seq) ? seq : 0;
            return resumed;
        }

        /// False for a message already handled (its session_seq is not above the highest so far): ignore it.
        public bool Accept(Dictionary<string, object> msg)
        {
            long seq;
            if (!TrySeq(msg, out seq)) return true;           // only a refused hello's errors have none
            if (seq <= LastSeq) { IgnoredDuplicates++; return false; }
            LastSeq = seq;
            if (seq < ReplayBeforeSeq) Replayed++;
            return true;
        }

        public bool CanResume { get { return Session != null && Token != null; } }

        /// hello.resume; `rewindMessages` > 0 asks for already-handled messages again (tests of the de-dup).
        public Dictionary<string, object> ResumeRequest(int rewindMessages = 0)
        {
            return new Dictionary<string, object>
            {
                { "session", Session }, { "token", Token }, { "last_session_seq", Math.Max(0, LastSeq - rewindMessages) },
            };
        }

        /// The URL of a resume: the first URL with ?session=<id> (replacing one it had).
        public Uri ResumeUrl(Uri url)
        {
            var builder = new UriBuilder(url);
            var kept = new List<string>();
            foreach (var part in builder.Query.TrimStart('?').Split('&'))
                if (part.Length > 0 && !part.StartsWith("session=", StringComparison.Ordinal)) kept.Add(part);
            kept.Add("session=" + Uri.EscapeDataString(Session));
            builder.Query = string.Join("&", kept);
            return builder.Uri;
        }

        /// Whether a connection that ended this way ends the conversation (no resume).
        /// closeCode: the close frame's code (null: the socket just went away); fatalCode: the code of a
        /// fatal `error` received before the close (null: none).
        public static bool EndsForGood(int? closeCode, string fatalCode)
        {
            if (fatalCode == "going_away" || fatalCode == "shutting_down" || fatalCode == "server_full") return false;
            if (fatalCode != null) return true;                     // idle_timeout, unauthorized, not_hello, ...
            if (closeCode == null) return false;                    // a drop: resume
            switch (closeCode.Value)
            {
                case 1001: case 1006: case 1011: case 1012: case 1013: case 1014: return false;
                default: return true;                               // 1000 bye, 1002, 1008, 1009, 4000 taken over, ...
            }
        }

        /// The pause before resume attempt `attempt` (1, 2, ...): none before the first (a drop or a
        /// going_away means "resume now"), then initialMs, 2x, 4x ... up to maxMs, each scaled by 0.5-1.0.
        public static int BackoffMs(int attempt, int initialMs, int maxMs, Random random)
        {
            if (attempt <= 1) return 0;
            double full = Math.Min(maxMs, initialMs * Math.Pow(2, Math.Min(30, attempt - 2)));
            return (int)(full * (0.5 + 0.5 * random.NextDouble()));
        }

        static bool TrySeq(Dictionary<string, object> msg, out long seq)
        {
            object v;
            seq = 0;
            if (!msg.TryGetValue("session_seq", out v) || v == null) return false;
            if (v is long) { seq = (long)v; return true; }
            if (v is double) { seq = (long)(double)v; return true; }
            return false;
        }
    }
}

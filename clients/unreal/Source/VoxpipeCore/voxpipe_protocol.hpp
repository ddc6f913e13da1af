// voxpipe wire contract v1, sans-I/O: client messages -> frames, server frames -> Message.
// No sockets and no engine types here, so the same code serves the Boost.Beast client and Unreal's
// IWebSocket. Binary frames carry msgpack (nlohmann::json::to_msgpack/from_msgpack, audio as msgpack
// bin); text frames carry JSON (audio as base64). Decoding never throws: a bad frame comes back as a
// Message with type "" and `problem` set (works with JSON_NOEXCEPTION builds such as Unreal's).
// ResumeState holds what a resume after a dropped socket needs and decides (wire contract, "Resume"), with
// no I/O either: the Boost.Beast client and Unreal's IWebSocket component share it.
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace voxpipe {

using json = nlohmann::json;

enum class Framing { Msgpack, Json };

struct Frame {
    std::vector<std::uint8_t> bytes;  // msgpack, or UTF-8 JSON text
    bool binary = true;               // true: send as a binary frame; false: as a text frame
    bool droppable = false;           // audio: may be dropped (oldest first) when the send queue is full
    bool live_only = false;           // audio, played: stale once the socket dropped, not kept while reconnecting
};

struct HelloOptions {
    int in_rate = 16000;              // 8000/16000/24000/48000
    int out_rate = 16000;
    std::optional<bool> aec;          // false: the mic hears the speakers; the server's echo guard turns on
    std::string token, system_prompt, voice, language;
    std::vector<std::string> subscribe;  // empty: all stages
};

// One server message. Fields not present in the message keep their defaults.
struct Message {
    std::string type;                 // "" when the frame could not be decoded (see problem)
    std::string problem;
    json raw;                         // the whole map; "data" is removed (decoded into pcm)
    std::string stage, text, event, code, message, session;
    std::string resume_token;         // ready: send it back in hello.resume after a lost socket
    bool resumed = false;             // ready: the session of hello.resume, picked up where it was
    std::int64_t session_seq = -1;    // every server message of a session (-1: a refused hello's errors)
    int turn = -1;
    int seq = -1;
    bool final = false;
    bool fatal = false;
    double played_ms = 0;
    int in_rate = 0, out_rate = 0;    // ready
    std::vector<std::int16_t> pcm;    // audio
};

// ------------------------------------------------------------ base64 (JSON framing)

inline std::string base64_encode(const std::uint8_t* data, std::size_t n) {
    static const char* abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    out.reserve((n + 2) / 3 * 4);
    for (std::size_t i = 0; i < n; i += 3) {
        std::uint32_t v = std::uint32_t(data[i]) << 16;
        if (i + 1 < n) v |= std::uint32_t(data[i + 1]) << 8;
        if (i + 2 < n) v |= data[i + 2];
        out += abc[(v >> 18) & 63];
        out += abc[(v >> 12) & 63];
        out += i + 1 < n ? abc[(v >> 6) & 63] : '=';
        out += i + 2 < n ? abc[v & 63] : '=';
    }
    return out;
}

inline bool base64_decode(const std::string& in, std::vector<std::uint8_t>& out) {
    auto value = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        if (c == '+') return 62;
        if (c == '/') return 63;
        return -1;
    };
    if (in.size() % 4 != 0) return false;
    out.clear();
    out.reserve(in.size() / 4 * 3);
    for (std::size_t i = 0; i < in.size(); i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; ++k) {
            char c = in[i + k];
            if (c == '=' && i + 4 == in.size() && k >= 2) { v[k] = 0; ++pad; continue; }
            if (pad || (v[k] = value(c)) < 0) return false;
        }
        std::uint32_t w = (std::uint32_t(v[0]) << 18) | (std::uint32_t(v[1]) << 12) | (std::uint32_t(v[2]) << 6) | std::uint32_t(v[3]);
        out.push_back(std::uint8_t(w >> 16));
        if (pad < 2) out.push_back(std::uint8_t(w >> 8));
        if (pad < 1) out.push_back(std::uint8_t(w));
    }
    return true;
}

// ------------------------------------------------------------ encoding

inline Frame encode(const json& msg, Framing framing, bool droppable = false) {
    Frame frame;
    frame.droppable = droppable;
    if (framing == Framing::Msgpack) {
        frame.bytes = json::to_msgpack(msg);
        frame.binary = true;
    } else {
        std::string text = msg.dump(-1, ' ', false, json::error_handler_t::replace);
        frame.bytes.assign(text.begin(), text.end());
        frame.binary = false;
    }
    return frame;
}

// hello.resume: pick the session up after a lost socket.
struct ResumeRequest {
    std::string session, token;
    std::int64_t last_session_seq = 0;
};

inline Frame hello(const HelloOptions& o, Framing framing, const ResumeRequest* resume = nullptr) {
    json audio_in = {{"format", "pcm16"}, {"rate", o.in_rate}, {"channels", 1}};
    if (o.aec) audio_in["aec"] = *o.aec;
    json msg = {{"type", "hello"}, {"protocol", 1}, {"audio_in", audio_in},
                {"audio_out", {{"format", "pcm16"}, {"rate", o.out_rate}}}};
    if (!o.token.empty()) msg["token"] = o.token;
    if (!o.subscribe.empty()) msg["subscribe"] = o.subscribe;
    json session = json::object();
    if (!o.system_prompt.empty()) session["system_prompt"] = o.system_prompt;
    if (!o.voice.empty()) session["voice"] = o.voice;
    if (!o.language.empty()) session["language"] = o.language;
    if (!session.empty()) msg["session"] = session;
    if (resume)
        msg["resume"] = {{"session", resume->session}, {"token", resume->token}, {"last_session_seq", resume->last_session_seq}};
    return encode(msg, framing);
}

// PCM16 mono at hello.in_rate; 10-40 ms per frame is best.
inline Frame audio(const std::int16_t* samples, std::size_t count, Framing framing) {
    std::vector<std::uint8_t> bytes(count * 2);
    for (std::size_t i = 0; i < count; ++i) {  // little-endian whatever the host
        auto u = static_cast<std::uint16_t>(samples[i]);
        bytes[2 * i] = std::uint8_t(u & 0xff);
        bytes[2 * i + 1] = std::uint8_t(u >> 8);
    }
    json msg = {{"type", "audio"}};
    if (framing == Framing::Msgpack) msg["data"] = json::binary(std::move(bytes));
    else msg["data"] = base64_encode(bytes.data(), bytes.size());
    Frame frame = encode(msg, framing, /*droppable=*/true);
    frame.live_only = true;
    return frame;
}

inline Frame text(const std::string& t, Framing f) { return encode({{"type", "text"}, {"text", t}}, f); }
inline Frame say(const std::string& t, Framing f) { return encode({{"type", "say"}, {"text", t}}, f); }
inline Frame interrupt(Framing f) { return encode({{"type", "interrupt"}}, f); }
inline Frame commit(Framing f) { return encode({{"type", "commit"}}, f); }
inline Frame bye(Framing f) { return encode({{"type", "bye"}}, f); }
inline Frame played(int turn, double ms, Framing f) {
    Frame frame = encode({{"type", "played"}, {"turn", turn}, {"ms", double(std::int64_t(ms * 10)) / 10.0}}, f);
    frame.live_only = true;
    return frame;
}
inline Frame ping(int id, Framing f) { return encode({{"type", "ping"}, {"id", id}}, f); }

// ------------------------------------------------------------ decoding

namespace detail {
inline std::string str(const json& m, const char* key) {
    auto it = m.find(key);
    return it != m.end() && it->is_string() ? it->get<std::string>() : std::string();
}
inline double num(const json& m, const char* key, double fallback) {
    auto it = m.find(key);
    return it != m.end() && it->is_number() ? it->get<double>() : fallback;
}
inline bool flag(const json& m, const char* key) {
    auto it = m.find(key);
    return it != m.end() && it->is_boolean() && it->get<bool>();
}
inline int rate_of(const json& m, const char* key) {
    auto it = m.find(key);
    return it != m.end() && it->is_object() ? int(num(*it, "rate", 0)) : 0;
}
}  // namespace detail

inline Message decode(const std::uint8_t* data, std::size_t size, bool binary) {
    Message out;
    json m = binary ? json::from_msgpack(data, data + size, true, /*allow_exceptions=*/false)
                    : json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
    if (m.is_discarded()) {
        out.problem = binary ? "cannot decode msgpack" : "cannot decode JSON";
        return out;
    }
    if (!m.is_object() || !m.contains("type") || !m["type"].is_string()) {
        out.problem = "a message must be a map with a string 'type'";
        return out;
    }
    using namespace detail;
    auto data_it = m.find("data");
    if (data_it != m.end()) {
        std::vector<std::uint8_t> bytes;
        if (data_it->is_binary()) bytes = data_it->get_binary();
        else if (data_it->is_string() && !base64_decode(data_it->get<std::string>(), bytes)) out.problem = "bad base64 in data";
        out.pcm.resize(bytes.size() / 2);
        for (std::size_t i = 0; i < out.pcm.size(); ++i)
            out.pcm[i] = static_cast<std::int16_t>(std::uint16_t(bytes[2 * i]) | (std::uint16_t(bytes[2 * i + 1]) << 8));
        m.erase(data_it);
    }
    out.type = str(m, "type");
    out.stage = str(m, "stage");
    out.text = str(m, "text");
    out.event = str(m, "event");
    out.code = str(m, "code");
    out.message = str(m, "message");
    out.session = str(m, "session");
    out.resume_token = str(m, "resume_token");
    out.resumed = flag(m, "resumed");
    auto seq_it = m.find("session_seq");
    if (seq_it != m.end() && seq_it->is_number_integer()) out.session_seq = seq_it->get<std::int64_t>();
    out.turn = int(num(m, "turn", -1));
    out.seq = int(num(m, "seq", -1));
    out.final = flag(m, "final");
    out.fatal = flag(m, "fatal");
    out.played_ms = num(m, "played_ms", 0);
    out.in_rate = rate_of(m, "audio_in");
    out.out_rate = rate_of(m, "audio_out");
    out.raw = std::move(m);
    return out;
}

// ------------------------------------------------------------ resume (no I/O)

// The session and its token, the highest session_seq handled (ready's own number aside: on a resume it
// comes before the replay's older numbers), duplicates, the resume hello and URL, which ends are for good,
// and the backoff between attempts. Not thread-safe: call it from the thread that reads the socket.
class ResumeState {
public:
    const std::string& session() const { return session_; }
    const std::string& token() const { return token_; }
    std::int64_t last_seq() const { return last_seq_; }
    std::int64_t replay_before_seq() const { return replay_before_; }  // a resumed ready's number
    int replayed() const { return replayed_; }                 // messages handled from replays
    int ignored_duplicates() const { return ignored_; }        // not above last_seq: already handled
    bool can_resume() const { return !session_.empty() && !token_.empty(); }

    // A ready arrived: true when it resumed the known session; false for a new one (numbering restarts).
    bool on_ready(const Message& ready) {
        bool resumed = !session_.empty() && ready.session == session_ && ready.resumed;
        if (!resumed) last_seq_ = 0;
        session_ = ready.session;
        token_ = ready.resume_token;
        replay_before_ = resumed ? ready.session_seq : 0;
        return resumed;
    }

    // False for a message already handled (its session_seq is not above the highest so far): ignore it.
    bool accept(const Message& m) {
        if (m.session_seq < 0) return true;  // only a refused hello's errors have none
        if (m.session_seq <= last_seq_) { ++ignored_; return false; }
        last_seq_ = m.session_seq;
        if (m.session_seq < replay_before_) ++replayed_;
        return true;
    }

    // rewind_messages > 0 asks for already-handled messages again (tests of the de-dup).
    ResumeRequest request(std::int64_t rewind_messages = 0) const {
        return ResumeRequest{session_, token_, std::max<std::int64_t>(0, last_seq_ - rewind_messages)};
    }

    // The URL path of a resume: the first path with session=<id> in its query (replacing one it had).
    std::string resume_path(const std::string& path) const {
        std::string base = path, query;
        auto q = path.find('?');
        if (q != std::string::npos) { base = path.substr(0, q); query = path.substr(q + 1); }
        std::string kept;
        std::size_t start = 0;
        while (start <= query.size() && !query.empty()) {
            auto amp = query.find('&', start);
            std::string part = query.substr(start, amp == std::string::npos ? std::string::npos : amp - start);
            if (!part.empty() && part.compare(0, 8, "session=") != 0) kept += part + "&";
            if (amp == std::string::npos) break;
            start = amp + 1;
        }
        return base + "?" + kept + "session=" + url_escape(session_);
    }

    // Whether a connection that ended this way ends the conversation (no resume). close_code: the close
    // frame's code (-1: the socket just went away); fatal_code: a fatal error's code before it ("": none).
    static bool ends_for_good(int close_code, const std::string& fatal_code) {
        if (fatal_code == "going_away" || fatal_code == "shutting_down" || fatal_code == "server_full") return false;
        if (!fatal_code.empty()) return true;  // idle_timeout, unauthorized, not_hello, ...
        switch (close_code) {
            case -1: case 1001: case 1006: case 1011: case 1012: case 1013: case 1014: return false;
            default: return true;              // 1000 bye, 1002, 1008, 1009, 4000 taken over, ...
        }
    }

    // The pause before attempt `attempt` (1, 2, ...): none before the first (a drop or going_away means
    // "resume now"), then initial_ms, 2x, 4x ... up to max_ms, scaled by 0.5 + 0.5 * jitter01 (0..1).
    static int backoff_ms(int attempt, int initial_ms, int max_ms, double jitter01) {
        if (attempt <= 1) return 0;
        double full = std::min(double(max_ms), initial_ms * std::pow(2.0, std::min(30, attempt - 2)));
        return int(full * (0.5 + 0.5 * jitter01));
    }

    static std::string url_escape(const std::string& s) {
        static const char* hex = "0123456789ABCDEF";
        std::string out;
        for (unsigned char c : s) {
            if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') out += char(c);
            else { out += '%'; out += hex[c >> 4]; out += hex[c & 15]; }
        }
        return out;
    }

private:
    std::string session_, token_;
    std::int64_t last_seq_ = 0;
    std::int64_t replay_before_ = 0;
    int replayed_ = 0;
    int ignored_ = 0;
};

}  // namespace voxpipe

// voxpipe wire contract v1, sans-I/O: client messages -> frames, server frames -> Message.
// No sockets and no engine types here, so the same code serves the Boost.Beast client and Unreal's
// IWebSocket. Binary frames carry msgpack (nlohmann::json::to_msgpack/from_msgpack, audio as msgpack
// bin); text frames carry JSON (audio as base64). Decoding never throws: a bad frame comes back as a
// Message with type "" and `problem` set (works with JSON_NOEXCEPTION builds such as Unreal's).
#pragma once

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

inline Frame hello(const HelloOptions& o, Framing framing) {
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
    return encode(msg, framing, /*droppable=*/true);
}

inline Frame text(const std::string& t, Framing f) { return encode({{"type", "text"}, {"text", t}}, f); }
inline Frame say(const std::string& t, Framing f) { return encode({{"type", "say"}, {"text", t}}, f); }
inline Frame interrupt(Framing f) { return encode({{"type", "interrupt"}}, f); }
inline Frame commit(Framing f) { return encode({{"type", "commit"}}, f); }
inline Frame bye(Framing f) { return encode({{"type", "bye"}}, f); }
inline Frame played(int turn, double ms, Framing f) {
    return encode({{"type", "played"}, {"turn", turn}, {"ms", double(std::int64_t(ms * 10)) / 10.0}}, f);
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

}  // namespace voxpipe

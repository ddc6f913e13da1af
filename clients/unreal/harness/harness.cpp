// Console harness for voxpipe::Client: proves the C++ core against a running voxpipe server.
//   ./harness ws://127.0.0.1:8765/ws out.wav [--rate 24000] [--json] [--drop [--rewind N]] [--pause]
// 1. say  -> every audio chunk of the turn until turn_end (seq 0,1,2..., one turn) -> out.wav
// 2. text -> prints the streamed reply, then waits for turn_end
// 3. a long say, interrupt after its first audio -> interrupted arrives, and no audio / turn_end of
//    that turn follows it.
// 4. (--drop) a long text turn; after 25 audio chunks (500 ms) it prints "drop: ..." and waits for the
//    connection to drop (the test cuts it); the client resumes on its own ("reconnecting:", "resume:"
//    lines), the cut turn's interrupted is replayed, and a new text is answered ("reply after resume: ...").
//    --rewind N makes the resume ask for N already-handled messages again: they must be ignored.
// 5. (--pause; the server in barge_in "words" mode, a test ASR that hears "yeah" in short audio) a long say played
//    through voxpipe::Playback by a simulated sound card (10 ms blocks on a real-time clock); after 30 chunks it
//    streams a short tone as the mic (200 ms, then 1.5 s of silence, in real time): the server pauses the agent
//    (agent_paused), hears a backchannel and resumes it (agent_resumed). Prints "pause: ..." lines: the samples
//    played between the two events (0: held), what was buffered at the pause, and that every sample received
//    was played, in order, once the turn ended.
// Last line before the verdict: "handled: <session_seq of every message handled that a resume could replay
// (all but audio and fatal errors), in order>".
// Exit code 0 only when every check held; 1 with "FAIL: ..." lines otherwise; 2 when it could not run.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "../Source/VoxpipeCore/voxpipe_client.hpp"
#include "../Source/VoxpipeCore/voxpipe_playback.hpp"

using Clock = std::chrono::steady_clock;
using voxpipe::Message;

namespace {

// Messages from the I/O thread, consumed in order by main.
class Inbox {
public:
    void push(Message m) {
        std::lock_guard<std::mutex> lock(mu_);
        items_.push_back(std::move(m));
        cv_.notify_one();
    }
    std::optional<Message> pop(std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(mu_);
        if (!cv_.wait_for(lock, timeout, [this] { return !items_.empty(); })) return std::nullopt;
        Message m = std::move(items_.front());
        items_.pop_front();
        return m;
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<Message> items_;
};

Inbox inbox;
std::vector<std::string> failures;
// every message handled: (session, session_seq, never replayed?); numbering starts again in a new session
std::mutex handled_mu;
std::vector<std::tuple<std::string, std::int64_t, bool>> handled;
std::string current_session;  // guarded by handled_mu
// step 5 only: fed by on_message on the I/O thread, as a game's player would be
std::mutex player_mu;
voxpipe::Playback* player = nullptr;  // guarded by player_mu
const Clock::time_point since = Clock::now();

void check(bool ok, const std::string& what) {
    if (!ok) failures.push_back(what);
}

std::optional<Message> next(std::chrono::milliseconds timeout) {
    auto m = inbox.pop(timeout);
    if (!m) return m;
    if (m->type == "closed") throw std::runtime_error("connection closed: " + m->problem);
    // going_away and resume_failed are the client's business: they show as reconnecting / reconnected
    if (m->type == "error" && m->code != "going_away" && m->code != "resume_failed")
        failures.push_back("server error " + m->code + ": " + m->message);
    if (m->type.empty()) failures.push_back("undecodable frame: " + m->problem);
    return m;
}

double ms_since(Clock::time_point t) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

void write_wav(const std::string& path, const std::vector<std::int16_t>& pcm, int rate) {
    std::ofstream f(path, std::ios::binary);
    auto u32 = [&](std::uint32_t v) { for (int i = 0; i < 4; ++i) f.put(char((v >> (8 * i)) & 0xff)); };
    auto u16 = [&](std::uint16_t v) { f.put(char(v & 0xff)); f.put(char(v >> 8)); };
    std::uint32_t data_bytes = std::uint32_t(pcm.size() * 2);
    f.write("RIFF", 4); u32(36 + data_bytes); f.write("WAVE", 4);
    f.write("fmt ", 4); u32(16); u16(1); u16(1); u32(std::uint32_t(rate)); u32(std::uint32_t(rate * 2)); u16(2); u16(16);
    f.write("data", 4); u32(data_bytes);
    for (auto s : pcm) u16(static_cast<std::uint16_t>(s));
}

void say_to_wav(voxpipe::Client& client, const std::string& wav_path, int rate) {
    client.say("Hello from the Unreal harness. Every chunk of this turn goes into a wave file.");
    std::vector<std::int16_t> samples;
    int turn = -1, next_seq = 0, chunks = 0;
    auto start = Clock::now();
    while (true) {
        auto m = next(std::chrono::seconds(10));
        if (!m) { failures.push_back("say: no turn_end within 10 s"); break; }
        if (m->type == "error") break;  // recorded by next(); this step cannot complete
        if (turn < 0 && m->turn >= 0) turn = m->turn;
        if (m->type == "audio") {
            check(m->turn == turn, "say: audio of turn " + std::to_string(m->turn) + " inside turn " + std::to_string(turn));
            check(m->seq == next_seq, "say: audio seq " + std::to_string(m->seq) + ", expected " + std::to_string(next_seq));
            next_seq = m->seq + 1;
            ++chunks;
            samples.insert(samples.end(), m->pcm.begin(), m->pcm.end());
            // A real player acks what it has played; here playback starts at the first chunk.
            client.played(m->turn, std::min(samples.size() * 1000.0 / rate, ms_since(start)));
        } else if (m->type == "interrupted") {
            failures.push_back("say: the turn was interrupted");
            break;
        } else if (m->type == "turn_end" && m->turn == turn) {
            break;
        }
    }
    int peak = 0;
    for (auto s : samples) peak = std::max(peak, std::abs(int(s)));
    check(chunks > 0, "say: no audio received");
    check(peak > 1000, "say: the audio is silent (peak " + std::to_string(peak) + ")");
    write_wav(wav_path, samples, rate);
    std::cout << "say: turn " << turn << ", " << chunks << " chunks, " << samples.size() * 1000 / rate
              << " ms, peak " << peak << " -> " << wav_path << std::endl;
}

void text_reply(voxpipe::Client& client) {
    client.send_text("hello from unreal");
    int turn = -1;
    bool final = false;
    std::string text;
    std::cout << "reply: " << std::flush;
    while (true) {
        auto m = next(std::chrono::seconds(10));
        if (!m) { failures.push_back("text: no turn_end within 10 s"); break; }
        if (m->type == "error") break;
        if (turn < 0 && m->turn >= 0) turn = m->turn;
        if (m->type == "reply") {
            check(!final, "text: a reply delta after the final one");
            std::cout << m->text << std::flush;
            text += m->text;
            final = final || m->final;
        } else if (m->type == "interrupted") {
            failures.push_back("text: the turn was interrupted");
            break;
        } else if (m->type == "turn_end" && m->turn == turn) {
            break;
        }
    }
    std::cout << std::endl;
    check(text.find_first_not_of(" \t\n") != std::string::npos, "text: empty reply");
    check(final, "text: no final reply message");
}

void interrupt_long_say(voxpipe::Client& client) {
    std::string words = "This is a long answer that will be cut off.";
    for (int i = 0; i < 60; ++i) words += " word" + std::to_string(i);
    client.say(words + ".");
    int turn = -1, before = 0, after = 0;
    bool saw_end = false;
    std::optional<Message> cut;
    auto start = Clock::now();
    double interrupt_at = -1, interrupted_at = -1;
    while (true) {
        auto wait = cut ? std::chrono::milliseconds(std::max<long>(1, long(interrupted_at + 1000 - ms_since(start))))
                        : std::chrono::milliseconds(10000);
        auto m = next(wait);
        if (!m) {
            if (!cut) failures.push_back("interrupt: no interrupted within 10 s");
            break;  // after interrupted: 1 s of quiet has passed
        }
        if (m->type == "error") break;
        if (turn < 0 && m->turn >= 0) turn = m->turn;
        if (m->turn != turn) continue;
        if (m->type == "audio") {
            (cut ? after : before)++;
            if (interrupt_at < 0) {
                client.interrupt();
                interrupt_at = ms_since(start);
            }
        } else if (m->type == "turn_end") {
            saw_end = true;
        } else if (m->type == "interrupted" && !cut) {
            cut = m;
            interrupted_at = ms_since(start);
        }
    }
    check(bool(cut), "interrupt: no interrupted message for turn " + std::to_string(turn));
    check(after == 0, "interrupt: " + std::to_string(after) + " audio chunks of turn " + std::to_string(turn) + " after interrupted");
    check(!saw_end, "interrupt: turn_end for the interrupted turn " + std::to_string(turn));
    if (cut)
        std::cout << "interrupt: turn " << turn << ", " << before << " chunks before, interrupted "
                  << int(interrupted_at - interrupt_at) << " ms after interrupt, played_ms " << cut->played_ms
                  << ", spoken \"" << cut->text << "\", " << after << " chunks after" << std::endl;
}

void drop_and_resume(voxpipe::Client& client) {
    std::string words = "a long story";
    for (int i = 0; i < 30; ++i) words += " w" + std::to_string(i);
    client.send_text(words);
    int turn = -1, chunks = 0;
    double received_ms = 0;
    auto start = Clock::now();
    while (chunks < 25) {
        auto m = next(std::chrono::seconds(10));
        if (!m) { failures.push_back("drop: no audio of the long turn within 10 s"); return; }
        if (m->type == "error") return;
        if (turn < 0 && m->turn >= 0) turn = m->turn;
        if (m->type != "audio" || m->turn != turn) continue;
        ++chunks;
        received_ms += m->pcm.size() * 1000.0 / client.ready().out_rate;
        client.played(m->turn, std::min(received_ms, ms_since(start)));
    }
    std::cout << "drop: turn " << turn << " speaking, " << chunks << " chunks received; waiting for the connection to drop" << std::endl;

    std::optional<Message> back;
    while (!back) {
        auto m = next(std::chrono::seconds(15));
        if (!m) { failures.push_back("drop: no resume within 15 s"); return; }
        if (m->type == "reconnecting")
            std::cout << "reconnecting: attempt " << m->raw["attempt"] << " after " << m->raw["delay_ms"] << " ms ("
                      << m->raw["reason"].get<std::string>() << ")" << std::endl;
        if (m->type == "reconnected") back = m;
    }
    const auto& r = back->raw;
    bool resumed = r["resumed"].get<bool>();
    if (resumed)
        std::cout << "resume: resumed session " << r["session"].get<std::string>() << " (attempt " << r["attempts"]
                  << "), last_session_seq " << r["last_session_seq"] << ", handled up to " << r["handled_seq"]
                  << ", ready " << r["ready_seq"] << std::endl;
    else
        std::cout << "resume: new session " << r["session"].get<std::string>() << " (" << r["failure_code"].get<std::string>()
                  << "), the conversation of " << r["previous_session"].get<std::string>() << " is lost" << std::endl;
    check(client.state() == voxpipe::State::Ready, "drop: not ready after on_reconnected");

    client.send_text("after the drop");
    std::optional<Message> cut;
    int new_turn = -1;
    std::string reply;
    while (true) {
        auto m = next(std::chrono::seconds(10));
        if (!m) { failures.push_back("drop: no answer after the resume within 10 s"); break; }
        if (m->type == "error" && m->code != "resume_failed") break;
        if (resumed && m->turn == turn) {
            if (m->type == "interrupted") {
                check(!cut, "drop: interrupted of turn " + std::to_string(turn) + " handled twice");
                cut = m;
            }
            check(m->type != "audio", "drop: audio of the cut turn " + std::to_string(turn) + " after the resume");
            check(m->type != "turn_end", "drop: turn_end of the cut turn " + std::to_string(turn));
            continue;
        }
        if (new_turn < 0 && m->type == "reply") new_turn = m->turn;
        if (m->turn != new_turn || new_turn < 0) continue;
        if (m->type == "reply") reply += m->text;
        if (m->type == "interrupted") { failures.push_back("drop: the answer after the resume was interrupted"); break; }
        if (m->type == "turn_end") break;
    }
    if (resumed) {
        check(bool(cut), "drop: no interrupted for the cut turn " + std::to_string(turn) + " in the replay");
        if (cut) std::cout << "resume: turn " << turn << " cut at " << cut->played_ms << " ms, spoken \"" << cut->text << "\"" << std::endl;
    }
    auto first = reply.find_first_not_of(' ');
    std::cout << "reply after resume: " << (first == std::string::npos ? "" : reply.substr(first)) << std::endl;
    std::cout << "resume: replayed " << client.replayed_messages() << ", ignored " << client.ignored_duplicates()
              << " already handled" << std::endl;
}

// ------------------------------------------------------------ 5. a backchannel over the agent: held, then on

// I/O thread: the playback first (a game's audio thread would read it meanwhile). agent_paused / agent_resumed
// note what had played when they came (before acting on them) in raw "played_then", "buffered_then", "at_ms".
void to_player(Message& m) {
    if (m.type == "agent_paused" || m.type == "agent_resumed") m.raw["at_ms"] = ms_since(since);
    std::lock_guard<std::mutex> lock(player_mu);
    if (!player) return;
    if (m.type == "audio") {
        player->write(m.turn, m.pcm);
    } else if (m.type == "interrupted") {
        player->flush(m.turn);
    } else if (m.type == "agent_paused" || m.type == "agent_resumed") {
        m.raw["played_then"] = player->total_played();
        m.raw["buffered_then"] = player->buffered();
        if (m.type == "agent_paused") player->pause();
        else player->resume();
    }
}

// A sound card: pulls 10 ms blocks from the playback on a real-time clock and keeps what it played.
class SoundCard {
public:
    SoundCard(voxpipe::Playback& playback, int rate) : playback_(playback), rate_(rate), thread_([this] { run(); }) {}
    ~SoundCard() { stop(); }

    // Until `done()` holds after a pull, or `timeout` passed; true when it held.
    template <class Done>
    bool wait_for(Done done, std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(mu_);
        return cv_.wait_for(lock, timeout, done);
    }

    void stop() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }

    std::vector<std::int16_t> played() {
        std::lock_guard<std::mutex> lock(mu_);
        return played_;
    }

private:
    void run() {
        std::vector<std::int16_t> block(std::size_t(rate_ / 100));
        auto start = Clock::now();
        std::int64_t frames = 0;
        while (!stop_) {
            auto due = std::int64_t(ms_since(start) * rate_ / 1000);
            for (; frames + std::int64_t(block.size()) <= due; frames += std::int64_t(block.size())) {
                std::size_t n = playback_.read(block.data(), block.size());
                std::lock_guard<std::mutex> lock(mu_);
                played_.insert(played_.end(), block.begin(), block.begin() + std::ptrdiff_t(n));
            }
            cv_.notify_all();
            std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the device's period: the clock paces it
        }
    }

    voxpipe::Playback& playback_;
    int rate_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<std::int16_t> played_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

// The mic: `voice_ms` of a 440 Hz tone, then `quiet_ms` of silence, in 20 ms frames paced to real time.
std::thread talk(voxpipe::Client& client, int voice_ms, int quiet_ms) {
    return std::thread([&client, voice_ms, quiet_ms] {
        const int rate = 16000, frame = rate / 50;
        const int total = (voice_ms + quiet_ms) * rate / 1000, voiced = voice_ms * rate / 1000;
        auto start = Clock::now();
        std::vector<std::int16_t> samples;
        for (int at = 0; at < total; at += frame) {
            samples.assign(std::size_t(std::min(frame, total - at)), 0);
            for (std::size_t i = 0; i < samples.size(); ++i) {
                int n = at + int(i);
                if (n < voiced) samples[i] = std::int16_t(0.3 * 32767 * std::sin(2 * 3.14159265358979323846 * 440 * n / rate));
            }
            client.send_audio(samples.data(), samples.size());
            // real time: the mic makes 20 ms of audio every 20 ms
            std::this_thread::sleep_until(start + std::chrono::milliseconds((at + frame) * 1000 / rate));
        }
    });
}

void pause_and_resume(voxpipe::Client& client, int rate) {
    voxpipe::Playback playback(std::size_t(rate) * 10);
    SoundCard card(playback, rate);
    {
        std::lock_guard<std::mutex> lock(player_mu);
        player = &playback;
    }
    std::string words = "word";
    for (int i = 1; i < 40; ++i) words += " word";
    client.say(words);  // 4 s of agent speech
    int turn = -1, chunks = 0, interrupted = 0;
    std::vector<std::int16_t> received;
    std::optional<Message> paused, resumed;
    std::thread mic;
    auto last_ack = Clock::now();
    while (true) {
        auto m = next(std::chrono::seconds(10));
        if (!m) { failures.push_back("pause: no turn_end within 10 s"); break; }
        if (m->type == "error") break;
        if (turn < 0 && m->type == "audio") turn = m->turn;
        if (turn < 0 || m->turn != turn) continue;  // the user's "yeah" turn: not answered, not played
        if (m->type == "audio") {
            received.insert(received.end(), m->pcm.begin(), m->pcm.end());
            if (++chunks == 30) mic = talk(client, 200, 1500);  // 600 ms sent, ~400 ms played: talk over it
        } else if (m->type == "agent_paused" && !paused) {
            paused = m;
        } else if (m->type == "agent_resumed" && !resumed) {
            resumed = m;
        } else if (m->type == "interrupted") {
            ++interrupted;
            break;
        } else if (m->type == "turn_end") {
            break;
        }
        if (ms_since(last_ack) >= 100 && playback.playing_turn() == turn) {
            last_ack = Clock::now();
            client.played(turn, playback.played_samples() * 1000.0 / rate);
        }
    }
    bool drained = card.wait_for([&] { return playback.total_played() >= std::int64_t(received.size()) && playback.buffered() == 0; },
                                 std::chrono::seconds(10));
    card.stop();
    {
        std::lock_guard<std::mutex> lock(player_mu);
        player = nullptr;
    }
    if (mic.joinable()) mic.join();
    auto played = card.played();

    check(bool(paused), "pause: no agent_paused for turn " + std::to_string(turn));
    check(bool(resumed), "pause: no agent_resumed for turn " + std::to_string(turn));
    check(interrupted == 0, "pause: turn " + std::to_string(turn) + " was interrupted");
    check(drained, "pause: the playback did not drain within 10 s of turn_end");
    if (paused && resumed) {
        auto played_at_pause = paused->raw["played_then"].get<std::int64_t>();
        auto buffered_at_pause = paused->raw["buffered_then"].get<std::int64_t>();
        auto while_paused = resumed->raw["played_then"].get<std::int64_t>() - played_at_pause;
        double after_ms = resumed->raw["at_ms"].get<double>() - paused->raw["at_ms"].get<double>();
        std::cout << "pause: turn " << turn << ", paused with " << played_at_pause << " samples played and " << buffered_at_pause
                  << " buffered, resumed " << std::int64_t(std::lround(after_ms)) << " ms later with " << while_paused
                  << " played while paused" << std::endl;
        check(after_ms > 0, "pause: agent_resumed came before agent_paused");
        check(buffered_at_pause > 0, "pause: nothing was buffered at agent_paused (nothing to hold)");
        check(while_paused == 0, "pause: " + std::to_string(while_paused) + " samples played while the agent was paused");
    }
    std::size_t same = 0;  // how far the samples played match the samples received, one for one
    while (same < played.size() && same < received.size() && played[same] == received[same]) ++same;
    bool in_order = same == played.size() && same == received.size();
    std::cout << "pause: received " << received.size() << " samples, played " << played.size() << ", in order "
              << (in_order ? "yes" : "no") << std::endl;
    check(played.size() == received.size(),
          "pause: " + std::to_string(played.size()) + " samples played of " + std::to_string(received.size()) + " received");
    check(in_order, "pause: the samples played differ from those received from sample " + std::to_string(same));
}

void report_handled(const std::string& last_session) {
    std::set<std::pair<std::string, std::int64_t>> seen;
    std::string non_audio;
    std::lock_guard<std::mutex> lock(handled_mu);
    for (const auto& [session, seq, not_replayed] : handled) {
        check(seen.insert({session, seq}).second, "a message handled twice: session_seq " + std::to_string(seq) + " of " + session);
        if (session == last_session && !not_replayed) non_audio += (non_audio.empty() ? "" : ",") + std::to_string(seq);
    }
    std::cout << "handled: " << non_audio << std::endl;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: harness WS_URL OUT.wav [--rate HZ] [--json] [--drop [--rewind N]] [--pause]" << std::endl;
        return 2;
    }
    std::string url = argv[1], wav = argv[2];
    voxpipe::HelloOptions options;
    voxpipe::Framing framing = voxpipe::Framing::Msgpack;
    voxpipe::ResumeOptions resume;
    bool drop = false, pause = false;
    for (int i = 3; i < argc; ++i) {
        std::string arg = argv[i];
        if (arg == "--rate" && i + 1 < argc) options.out_rate = std::atoi(argv[++i]);
        else if (arg == "--json") framing = voxpipe::Framing::Json;
        else if (arg == "--drop") drop = true;
        else if (arg == "--pause") pause = true;
        else if (arg == "--rewind" && i + 1 < argc) resume.rewind_messages = std::atoi(argv[++i]);
    }
    try {
        voxpipe::Client client(framing, 256, resume);
        client.on_message = [](const Message& m) {
            if (m.session_seq >= 0) {
                std::lock_guard<std::mutex> lock(handled_mu);
                // audio and fatal errors (going_away) are numbered but never replayed: kept apart from the record
                handled.emplace_back(current_session, m.session_seq, m.type == "audio" || (m.type == "error" && m.fatal));
            }
            Message copy = m;
            to_player(copy);
            inbox.push(std::move(copy));
        };
        client.on_reconnecting = [](int attempt, int delay_ms, const std::string& reason) {
            Message m;
            m.type = "reconnecting";
            m.raw = {{"attempt", attempt}, {"delay_ms", delay_ms}, {"reason", reason}};
            inbox.push(std::move(m));
        };
        client.on_reconnected = [](const voxpipe::Reconnected& r) {
            {
                std::lock_guard<std::mutex> lock(handled_mu);
                current_session = r.session;  // before the new session's messages are delivered
            }
            Message m;
            m.type = "reconnected";
            m.raw = {{"resumed", r.resumed}, {"session", r.session}, {"previous_session", r.previous_session},
                     {"failure_code", r.failure_code}, {"attempts", r.attempts}, {"last_session_seq", r.last_session_seq},
                     {"handled_seq", r.handled_seq}, {"ready_seq", r.ready_seq}};
            inbox.push(std::move(m));
        };
        client.on_closed = [](const std::string& why) {
            Message m;
            m.type = "closed";
            m.problem = why.empty() ? "by the server" : why;
            inbox.push(std::move(m));
        };
        const Message& ready = client.connect(url, options);
        {
            std::lock_guard<std::mutex> lock(handled_mu);  // messages before this point carry no session yet
            current_session = ready.session;
            for (auto& h : handled) std::get<0>(h) = ready.session;
        }
        std::string graph;
        if (ready.raw.contains("graph") && ready.raw["graph"].is_array())
            for (const auto& node : ready.raw["graph"])
                graph += (graph.empty() ? "" : " -> ") + node.value("name", std::string("?")) + "(" + node.value("engine", std::string("?")) + ")";
        std::cout << "ready: session " << ready.session << ", graph " << graph << ", audio_out " << ready.out_rate
                  << " Hz, " << (framing == voxpipe::Framing::Json ? "JSON" : "msgpack") << " framing" << std::endl;
        check(ready.out_rate == options.out_rate,
              "ready.audio_out.rate is " + std::to_string(ready.out_rate) + ", asked " + std::to_string(options.out_rate));

        say_to_wav(client, wav, ready.out_rate);
        text_reply(client);
        interrupt_long_say(client);
        if (drop) drop_and_resume(client);
        if (pause) pause_and_resume(client, ready.out_rate);
        client.close();
        report_handled(current_session);  // the I/O thread has stopped
    } catch (const std::exception& exc) {
        std::cerr << "ERROR: " << exc.what() << std::endl;
        return 2;
    }
    if (failures.empty()) {
        std::cout << "OK: all checks held" << std::endl;
        return 0;
    }
    for (const auto& f : failures) std::cout << "FAIL: " << f << std::endl;
    return 1;
}

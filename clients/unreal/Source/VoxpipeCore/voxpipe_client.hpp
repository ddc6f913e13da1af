// voxpipe::Client: one conversation over a Boost.Beast WebSocket, no engine dependency.
// One I/O thread owns the socket: reads run there and call on_message; sends from any thread are
// posted to it and written one at a time from a bounded queue (full: the oldest droppable frame,
// i.e. audio, is dropped and counted; control messages are never dropped).
// Resume (wire contract, "Resume"): when the socket drops, or the server says going_away, the client
// reconnects on its own (on_reconnecting, then on_reconnected) with hello.resume and ?session=<id>,
// backing off between attempts (ResumeState); the server replays what was missed, and a message whose
// session_seq is not above the highest handled is ignored. While it is away, audio and played acks are
// dropped (stale), other frames wait and go after the new ready. A refused resume (resume_failed) gives a
// new session: on_reconnected says so (resumed false), the conversation is lost.
// Callbacks run on the I/O thread: hand audio to your player, marshal the rest to your game thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>

#include "voxpipe_protocol.hpp"

namespace voxpipe {

struct Url {
    std::string host, port, path;
};

// ws://host[:port][/path]; wss:// needs beast::ssl_stream (not built here).
inline Url parse_url(const std::string& url) {
    const std::string scheme = "ws://";
    if (url.compare(0, scheme.size(), scheme) != 0) throw std::invalid_argument("only ws:// URLs are supported: " + url);
    std::string rest = url.substr(scheme.size());
    auto slash = rest.find('/');
    std::string authority = rest.substr(0, slash);
    Url out;
    out.path = slash == std::string::npos ? "/" : rest.substr(slash);
    auto colon = authority.rfind(':');
    out.host = colon == std::string::npos ? authority : authority.substr(0, colon);
    out.port = colon == std::string::npos ? "80" : authority.substr(colon + 1);
    if (out.host.empty()) throw std::invalid_argument("no host in " + url);
    return out;
}

struct ResumeOptions {
    bool auto_resume = true;
    int initial_delay_ms = 250;       // attempt 1 at once, then this, doubling, up to max_delay_ms (jittered)
    int max_delay_ms = 5000;
    int max_attempts = 16;            // 30-60 s of trying: as long as the server's session.resume_grace_s (30 s)
    int rewind_messages = 0;          // tests only: ask for this many already-handled messages again
    std::chrono::seconds idle_timeout{30};  // no frame for this long (pings answered count): the socket is dead
};

struct Reconnected {
    bool resumed = false;             // false: a new session (failure_code says why); the history is gone
    std::string session, previous_session, failure_code;
    int attempts = 0;
    std::int64_t last_session_seq = 0;  // what the resume hello said it had handled
    std::int64_t handled_seq = 0;       // the highest session_seq handled before the drop
    std::int64_t ready_seq = 0;         // the resumed ready's session_seq: the replay is numbered below it
};

enum class State { Connecting, Ready, Reconnecting, Closed };

class Client {
public:
    std::function<void(const Message&)> on_message;        // every server message (I/O thread)
    std::function<void(const std::string& why)> on_closed;  // for good; "" when closed normally
    std::function<void(int attempt, int delay_ms, const std::string& reason)> on_reconnecting;
    std::function<void(const Reconnected&)> on_reconnected;

    explicit Client(Framing framing = Framing::Msgpack, std::size_t max_queued_frames = 256, ResumeOptions resume = {})
        : framing_(framing), max_queued_(max_queued_frames), resume_options_(resume) {}

    ~Client() { shutdown(); }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    Framing framing() const { return framing_; }
    const Message& ready() const { return ready_; }  // the first connection's ready
    std::uint64_t dropped_audio_frames() const { return dropped_; }
    State state() const { return state_; }
    std::int64_t last_session_seq() const { return last_seq_; }
    int replayed_messages() const { return replayed_; }
    int ignored_duplicates() const { return ignored_; }

    // Connects, sends hello and waits for ready (throws std::runtime_error on failure or timeout): a first
    // connection that fails is not retried, there is no conversation to resume yet.
    const Message& connect(const std::string& url, const HelloOptions& options,
                           std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        url_ = parse_url(url);
        options_ = options;
        timeout_ = timeout;
        auto ready = ready_promise_.get_future();
        boost::asio::post(strand_, [this] { start_attempt(url_.path, voxpipe::hello(options_, framing_)); });
        thread_ = std::thread([this] { ioc_.run(); });
        if (ready.wait_for(timeout) != std::future_status::ready) {
            shutdown();
            throw std::runtime_error("no ready from " + url + " within the timeout");
        }
        ready_ = ready.get();  // rethrows a connect failure
        return ready_;
    }

    // Thread-safe: queue a frame for the I/O thread.
    void send(Frame frame) {
        boost::asio::post(strand_, [this, f = std::move(frame)]() mutable {
            if (closing_ || state_ == State::Closed) return;
            if (f.live_only && state_ != State::Ready) {
                if (f.droppable) ++dropped_;
                return;
            }
            if (f.droppable && queue_.size() >= max_queued_) {
                // Overflow policy: drop the oldest queued audio (the frame being written left the queue).
                for (auto it = queue_.begin(); it != queue_.end(); ++it)
                    if (it->droppable) { queue_.erase(it); ++dropped_; break; }
            }
            queue_.push_back(std::move(f));
            write_next();
        });
    }

    void send_audio(const std::int16_t* samples, std::size_t count) { send(audio(samples, count, framing_)); }
    void send_text(const std::string& t) { send(text(t, framing_)); }
    void say(const std::string& t) { send(voxpipe::say(t, framing_)); }
    void interrupt() { send(voxpipe::interrupt(framing_)); }
    void commit() { send(voxpipe::commit(framing_)); }
    void played(int turn, double ms) { send(voxpipe::played(turn, ms, framing_)); }

    // Says bye (the session ends for good), waits (up to `timeout`) for the server to close the socket,
    // then stops the I/O thread. While reconnecting, stops the attempts.
    void close(std::chrono::milliseconds timeout = std::chrono::seconds(3)) {
        if (thread_.joinable() && state_ != State::Closed) {
            boost::asio::post(strand_, [this] {
                if (state_ == State::Ready) {
                    queue_.push_back(bye(framing_));
                    write_next();
                    closing_ = true;  // after the bye is queued: nothing else is
                } else {
                    closing_ = true;
                    timer_.cancel();
                    finish("");
                }
            });
            auto deadline = std::chrono::steady_clock::now() + timeout;
            while (state_ != State::Closed && std::chrono::steady_clock::now() < deadline)
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        shutdown();
    }

private:
    using Ws = boost::beast::websocket::stream<boost::beast::tcp_stream>;

    // One socket and what belongs to it; kept alive by the handlers of its pending operations.
    struct Conn {
        explicit Conn(boost::asio::strand<boost::asio::io_context::executor_type> ex) : ws(ex) {}
        Ws ws;
        boost::beast::flat_buffer buffer;
        std::uint64_t id = 0;
        bool open = false;            // ready received
        bool ended = false;
        std::string fatal_code;       // a fatal error received on it
        std::vector<Message> before;  // messages before ready (a refused resume's resume_failed)
    };

    void start_attempt(const std::string& path, Frame hello) {
        namespace beast = boost::beast;
        auto c = std::make_shared<Conn>(strand_);
        c->id = ++conn_ids_;
        conn_ = c;
        writing_ = false;
        beast::get_lowest_layer(c->ws).expires_after(timeout_);
        auto frame = std::make_shared<Frame>(std::move(hello));
        resolver_.async_resolve(url_.host, url_.port, [this, c, frame, path](beast::error_code ec, auto results) {
            if (ec) return ended(c, "resolve: " + ec.message(), -1);
            beast::get_lowest_layer(c->ws).async_connect(results, [this, c, frame, path](beast::error_code ec, auto) {
                if (ec) return ended(c, "connect: " + ec.message(), -1);
                beast::get_lowest_layer(c->ws).expires_never();  // the websocket's own timeouts take over
                beast::websocket::stream_base::timeout t;
                t.handshake_timeout = timeout_;
                t.idle_timeout = resume_options_.idle_timeout;
                t.keep_alive_pings = true;  // a half-open socket (network gone, no reset) is noticed
                c->ws.set_option(t);
                c->ws.async_handshake(url_.host + ":" + url_.port, path, [this, c, frame](beast::error_code ec) {
                    if (ec) return ended(c, "handshake: " + ec.message(), -1);
                    c->ws.binary(frame->binary);
                    c->ws.async_write(boost::asio::buffer(frame->bytes), [this, c, frame](beast::error_code ec, std::size_t) {
                        if (ec) return ended(c, "write: " + ec.message(), -1);
                        read_next(c);
                    });
                });
            });
        });
    }

    void read_next(const std::shared_ptr<Conn>& c) {
        c->ws.async_read(c->buffer, [this, c](boost::beast::error_code ec, std::size_t) {
            if (ec) {
                bool closed = ec == boost::beast::websocket::error::closed;
                return ended(c, closed ? "closed " + std::to_string(int(c->ws.reason().code)) : "read: " + ec.message(),
                             closed ? int(c->ws.reason().code) : -1);
            }
            if (c != conn_) return;
            auto data = c->buffer.cdata();
            Message msg = decode(static_cast<const std::uint8_t*>(data.data()), data.size(), c->ws.got_binary());
            c->buffer.consume(c->buffer.size());
            if (!c->open) {
                if (msg.type == "ready") opened(c, std::move(msg));
                else if (msg.type == "error" && msg.fatal) c->fatal_code = msg.code;  // the close follows
                else c->before.push_back(std::move(msg));
            } else {
                if (msg.type == "error" && msg.fatal) c->fatal_code = msg.code;
                deliver(msg);
            }
            read_next(c);
        });
    }

    void opened(const std::shared_ptr<Conn>& c, Message ready) {
        std::int64_t handled = resume_.last_seq();
        std::string previous = resume_.session();
        bool resumed = resume_.on_ready(ready);
        c->open = true;
        bool first = state_ == State::Connecting;
        state_ = State::Ready;
        if (first) {
            ready_promise_.set_value(ready);
        } else if (on_reconnected) {
            Reconnected r;
            r.resumed = resumed;
            r.session = ready.session;
            r.previous_session = previous;
            r.attempts = attempt_;
            r.last_session_seq = asked_from_;
            r.handled_seq = handled;
            r.ready_seq = resume_.replay_before_seq();
            bool refused = false;
            for (const auto& m : c->before) refused = refused || (m.type == "error" && m.code == "resume_failed");
            if (!resumed) r.failure_code = refused ? "resume_failed" : asked_ ? "not_resumed" : "resume_off";
            on_reconnected(r);
        }
        for (const auto& m : c->before) deliver(m);
        c->before.clear();
        attempt_ = 0;
        write_next();
    }

    void deliver(const Message& msg) {
        bool fresh = resume_.accept(msg);
        last_seq_ = resume_.last_seq();
        replayed_ = resume_.replayed();
        ignored_ = resume_.ignored_duplicates();
        if (fresh && on_message) on_message(msg);
    }

    // A socket ended (or an attempt on it failed): resume, try again, or end for good.
    void ended(const std::shared_ptr<Conn>& c, const std::string& why, int close_code) {
        if (c != conn_ || c->ended) return;
        c->ended = true;
        boost::beast::error_code ignored;
        boost::beast::get_lowest_layer(c->ws).socket().close(ignored);  // ends its other pending operation
        writing_ = false;
        if (state_ == State::Connecting) {  // the first connection: connect() reports it
            std::string what = c->fatal_code.empty() ? why : c->fatal_code + " (" + why + ")";
            ready_promise_.set_exception(std::make_exception_ptr(std::runtime_error(what)));
            state_ = State::Closed;
            return;
        }
        bool was_open = c->open;
        if (closing_ || !resume_options_.auto_resume || (was_open && ResumeState::ends_for_good(close_code, c->fatal_code))) {
            return finish(closing_ && was_open ? std::string() : c->fatal_code.empty() ? why : c->fatal_code + ": " + why);
        }
        if (!was_open && !c->fatal_code.empty() && ResumeState::ends_for_good(-1, c->fatal_code)) {
            return finish(c->fatal_code + ": the resume was refused for good");  // unauthorized, a bad hello
        }
        if (was_open) {
            state_ = State::Reconnecting;
            for (auto it = queue_.begin(); it != queue_.end();) {  // stale once the socket is gone
                if (it->live_only) { if (it->droppable) ++dropped_; it = queue_.erase(it); }
                else ++it;
            }
        }
        schedule_attempt(was_open ? (c->fatal_code.empty() ? "connection lost: " + why : c->fatal_code + ": " + why)
                                  : "attempt " + std::to_string(attempt_) + " failed: " + why);
    }

    void schedule_attempt(const std::string& reason) {
        if (++attempt_ > resume_options_.max_attempts)
            return finish("resume_gave_up: no resume after " + std::to_string(resume_options_.max_attempts) + " attempts (" + reason + ")");
        int delay_ms = ResumeState::backoff_ms(attempt_, resume_options_.initial_delay_ms, resume_options_.max_delay_ms,
                                               std::uniform_real_distribution<double>(0.0, 1.0)(random_));
        if (on_reconnecting) on_reconnecting(attempt_, delay_ms, reason);
        timer_.expires_after(std::chrono::milliseconds(delay_ms));
        timer_.async_wait([this](boost::beast::error_code ec) {
            if (ec || closing_ || state_ == State::Closed) return;
            asked_ = resume_.can_resume();
            ResumeRequest request = resume_.request(resume_options_.rewind_messages);
            asked_from_ = asked_ ? request.last_session_seq : 0;
            std::string path = resume_.session().empty() ? url_.path : resume_.resume_path(url_.path);
            start_attempt(path, voxpipe::hello(options_, framing_, asked_ ? &request : nullptr));
        });
    }

    void finish(const std::string& why) {
        if (state_ == State::Closed) return;
        state_ = State::Closed;
        if (on_closed) on_closed(why);
    }

    void write_next() {
        auto c = conn_;
        if (writing_ || queue_.empty() || !c || !c->open || c->ended) return;
        writing_ = true;
        auto frame = std::make_shared<Frame>(std::move(queue_.front()));  // sent at most once
        queue_.pop_front();
        c->ws.binary(frame->binary);
        c->ws.async_write(boost::asio::buffer(frame->bytes), [this, c, frame](boost::beast::error_code ec, std::size_t) {
            if (c != conn_) return;
            writing_ = false;
            if (ec) return ended(c, "write: " + ec.message(), -1);
            write_next();
        });
    }

    void shutdown() {
        if (thread_.joinable()) {
            closing_ = true;
            boost::asio::post(strand_, [this] {
                timer_.cancel();
                if (conn_) {
                    boost::beast::error_code ignored;
                    boost::beast::get_lowest_layer(conn_->ws).socket().close(ignored);
                }
            });
            work_.reset();
            ioc_.stop();
            thread_.join();
        }
    }

    Framing framing_;
    std::size_t max_queued_;
    ResumeOptions resume_options_;
    boost::asio::io_context ioc_;
    boost::asio::strand<boost::asio::io_context::executor_type> strand_{boost::asio::make_strand(ioc_)};
    boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{boost::asio::make_work_guard(ioc_)};
    boost::asio::ip::tcp::resolver resolver_{strand_};
    boost::asio::steady_timer timer_{strand_};
    std::shared_ptr<Conn> conn_;     // the current socket (I/O thread only, like everything below)
    std::deque<Frame> queue_;
    bool writing_ = false;
    ResumeState resume_;
    int attempt_ = 0;
    bool asked_ = false;             // the current attempt sent hello.resume
    std::int64_t asked_from_ = 0;
    std::uint64_t conn_ids_ = 0;
    std::mt19937 random_{std::random_device{}()};
    std::atomic<State> state_{State::Connecting};
    std::atomic<bool> closing_{false};
    std::atomic<std::uint64_t> dropped_{0};
    std::atomic<std::int64_t> last_seq_{0};
    std::atomic<int> replayed_{0};
    std::atomic<int> ignored_{0};
    std::promise<Message> ready_promise_;
    Message ready_;
    HelloOptions options_;
    std::chrono::milliseconds timeout_{10000};
    Url url_;
    std::thread thread_;
};

}  // namespace voxpipe

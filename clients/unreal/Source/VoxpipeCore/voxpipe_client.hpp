// voxpipe::Client: one conversation over a Boost.Beast WebSocket, no engine dependency.
// One I/O thread owns the socket: reads run there and call on_message; sends from any thread are
// posted to it and written one at a time from a bounded queue (full: the oldest droppable frame,
// i.e. audio, is dropped and counted; control messages are never dropped).
// Callbacks run on the I/O thread: hand audio to your player, marshal the rest to your game thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
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

class Client {
public:
    std::function<void(const Message&)> on_message;        // every server message (I/O thread)
    std::function<void(const std::string& why)> on_closed;  // "" when the server closed normally

    explicit Client(Framing framing = Framing::Msgpack, std::size_t max_queued_frames = 256)
        : framing_(framing), max_queued_(max_queued_frames), ws_(boost::asio::make_strand(ioc_)) {}

    ~Client() { shutdown(); }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    Framing framing() const { return framing_; }
    const Message& ready() const { return ready_; }
    std::uint64_t dropped_audio_frames() const { return dropped_; }

    // Connects, sends hello and waits for ready (throws std::runtime_error on failure or timeout).
    const Message& connect(const std::string& url, const HelloOptions& options,
                           std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
        url_ = parse_url(url);
        hello_ = voxpipe::hello(options, framing_);
        auto ready = ready_promise_.get_future();
        namespace beast = boost::beast;
        beast::get_lowest_layer(ws_).expires_after(timeout);
        resolver_.async_resolve(url_.host, url_.port, [this](beast::error_code ec, auto results) {
            if (ec) return fail("resolve", ec);
            beast::get_lowest_layer(ws_).async_connect(results, [this](beast::error_code ec, auto) {
                if (ec) return fail("connect", ec);
                beast::get_lowest_layer(ws_).expires_never();  // the websocket's own timeouts take over
                ws_.set_option(beast::websocket::stream_base::timeout::suggested(beast::role_type::client));
                ws_.async_handshake(url_.host + ":" + url_.port, url_.path, [this](beast::error_code ec) {
                    if (ec) return fail("handshake", ec);
                    queue_.push_back(hello_);
                    write_next();
                    read_next();
                });
            });
        });
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
        boost::asio::post(ws_.get_executor(), [this, f = std::move(frame)]() mutable {
            if (closing_) return;
            if (f.droppable && queue_.size() >= max_queued_) {
                // Overflow policy: drop the oldest queued audio (never the frame being written).
                for (auto it = queue_.begin() + (writing_ ? 1 : 0); it != queue_.end(); ++it)
                    if (it->droppable) { queue_.erase(it); ++dropped_; break; }
            }
            queue_.push_back(std::move(f));
            if (!writing_) write_next();
        });
    }

    void send_audio(const std::int16_t* samples, std::size_t count) { send(audio(samples, count, framing_)); }
    void send_text(const std::string& t) { send(text(t, framing_)); }
    void say(const std::string& t) { send(voxpipe::say(t, framing_)); }
    void interrupt() { send(voxpipe::interrupt(framing_)); }
    void commit() { send(voxpipe::commit(framing_)); }
    void played(int turn, double ms) { send(voxpipe::played(turn, ms, framing_)); }

    // Says bye, waits (up to `timeout`) for the server to close the socket, then stops the I/O thread.
    void close(std::chrono::milliseconds timeout = std::chrono::seconds(3)) {
        if (thread_.joinable() && !closed_) {
            send(bye(framing_));
            auto deadline = std::chrono::steady_clock::now() + timeout;
            while (!closed_ && std::chrono::steady_clock::now() < deadline)
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        shutdown();
    }

private:
    void fail(const char* what, boost::beast::error_code ec) {
        std::string why = ec == boost::beast::websocket::error::closed ? std::string() : std::string(what) + ": " + ec.message();
        if (!got_ready_) {
            got_ready_ = true;
            ready_promise_.set_exception(std::make_exception_ptr(std::runtime_error(why.empty() ? "closed before ready" : why)));
        }
        if (!closed_.exchange(true) && on_closed) on_closed(why);
    }

    void read_next() {
        ws_.async_read(buffer_, [this](boost::beast::error_code ec, std::size_t) {
            if (ec) return fail("read", ec);
            auto data = buffer_.cdata();
            Message msg = decode(static_cast<const std::uint8_t*>(data.data()), data.size(), ws_.got_binary());
            buffer_.consume(buffer_.size());
            if (!got_ready_) {
                if (msg.type == "ready") {
                    got_ready_ = true;
                    ready_promise_.set_value(msg);
                } else if (msg.type == "error" && msg.fatal) {
                    got_ready_ = true;
                    ready_promise_.set_exception(std::make_exception_ptr(std::runtime_error(msg.code + ": " + msg.message)));
                }
            } else if (on_message) {
                on_message(msg);
            }
            read_next();
        });
    }

    void write_next() {
        if (queue_.empty() || closed_) { writing_ = false; return; }
        writing_ = true;
        ws_.binary(queue_.front().binary);
        ws_.async_write(boost::asio::buffer(queue_.front().bytes), [this](boost::beast::error_code ec, std::size_t) {
            queue_.pop_front();
            if (ec) { writing_ = false; return fail("write", ec); }
            write_next();
        });
    }

    void shutdown() {
        if (thread_.joinable()) {
            closing_ = true;
            boost::asio::post(ws_.get_executor(), [this] {
                boost::beast::error_code ignored;
                boost::beast::get_lowest_layer(ws_).socket().close(ignored);
            });
            ioc_.stop();
            thread_.join();
        }
    }

    Framing framing_;
    std::size_t max_queued_;
    boost::asio::io_context ioc_;
    boost::asio::ip::tcp::resolver resolver_{ioc_};
    boost::beast::websocket::stream<boost::beast::tcp_stream> ws_;
    boost::beast::flat_buffer buffer_;
    std::deque<Frame> queue_;        // I/O thread only
    bool writing_ = false;           // I/O thread only
    bool got_ready_ = false;         // I/O thread only
    std::atomic<bool> closed_{false};
    std::atomic<bool> closing_{false};
    std::atomic<std::uint64_t> dropped_{0};
    std::promise<Message> ready_promise_;
    Message ready_;
    Frame hello_;
    Url url_;
    std::thread thread_;
};

}  // namespace voxpipe

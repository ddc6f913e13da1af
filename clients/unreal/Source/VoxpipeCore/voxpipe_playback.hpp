// voxpipe::Playback: the agent's audio between the thread that receives it (write, from on_message) and an
// audio device's callback (read), PCM16 mono at the server's audio_out rate. No engine, no sockets: for a
// program on the plain C++ core (the harness plays through it); inside Unreal the sample component does the
// same with USoundWaveProcedural and UAudioComponent::SetPaused.
// - write (audio) appends a chunk; past capacity the newest samples are dropped.
// - pause (agent_paused) holds playback where it is, keeping the buffer; resume (agent_resumed) plays on
//   from there, nothing lost (wire contract, "Agent pause").
// - flush (interrupted) empties the buffer, ignores that turn from then on, and ends a pause.
// - read fills the device's buffer; silence while held or empty. playing_turn / played_samples are what
//   `played` acks report. Thread-safe (one mutex).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <set>
#include <utility>
#include <vector>

namespace voxpipe {

class Playback {
public:
    explicit Playback(std::size_t capacity_samples) : capacity_(capacity_samples) {}

    // A chunk of `turn`; returns the samples kept.
    std::size_t write(int turn, const std::vector<std::int16_t>& pcm) {
        std::lock_guard<std::mutex> lock(mu_);
        if (cut_.count(turn)) return 0;  // belt and braces: the server sends none after interrupted
        std::size_t n = std::min(pcm.size(), capacity_ - std::min(capacity_, buffer_.size()));
        buffer_.insert(buffer_.end(), pcm.begin(), pcm.begin() + std::ptrdiff_t(n));
        if (n > 0) runs_.emplace_back(turn, n);
        return n;
    }

    // agent_paused: hold playback where it is; the buffer is kept for resume().
    void pause() {
        std::lock_guard<std::mutex> lock(mu_);
        held_ = true;
    }

    // agent_resumed: play on from where it was held.
    void resume() {
        std::lock_guard<std::mutex> lock(mu_);
        held_ = false;
    }

    // interrupted: drop what is buffered (the cut is heard at once), ignore the turn's audio from now on, and
    // end a pause (the turn it held is over).
    void flush(int turn) {
        std::lock_guard<std::mutex> lock(mu_);
        cut_.insert(turn);
        drop();
    }

    // A new session (turn ids start again): drop everything, forget the cut turns.
    void clear() {
        std::lock_guard<std::mutex> lock(mu_);
        cut_.clear();
        drop();
    }

    // The device's callback: fill `frames` samples of `out`; returns how many carry agent audio (the first
    // ones; the rest is silence).
    std::size_t read(std::int16_t* out, std::size_t frames) {
        std::lock_guard<std::mutex> lock(mu_);
        std::size_t n = held_ ? 0 : std::min(frames, buffer_.size());
        std::copy(buffer_.begin(), buffer_.begin() + std::ptrdiff_t(n), out);
        std::fill(out + n, out + frames, std::int16_t(0));
        buffer_.erase(buffer_.begin(), buffer_.begin() + std::ptrdiff_t(n));
        total_played_ += std::int64_t(n);
        for (std::size_t left = n; left > 0 && !runs_.empty();) {
            auto& run = runs_.front();
            if (run.first != playing_turn_) { playing_turn_ = run.first; played_samples_ = 0; }
            std::size_t take = std::min(left, run.second);
            run.second -= take;
            left -= take;
            played_samples_ += std::int64_t(take);
            if (run.second == 0) runs_.pop_front();
        }
        return n;
    }

    int playing_turn() const { std::lock_guard<std::mutex> lock(mu_); return playing_turn_; }
    std::int64_t played_samples() const { std::lock_guard<std::mutex> lock(mu_); return played_samples_; }  // of playing_turn
    std::int64_t total_played() const { std::lock_guard<std::mutex> lock(mu_); return total_played_; }
    std::size_t buffered() const { std::lock_guard<std::mutex> lock(mu_); return buffer_.size(); }
    bool held() const { std::lock_guard<std::mutex> lock(mu_); return held_; }

private:
    void drop() {
        buffer_.clear();
        runs_.clear();
        held_ = false;
    }

    mutable std::mutex mu_;
    std::size_t capacity_;
    std::deque<std::int16_t> buffer_;
    std::deque<std::pair<int, std::size_t>> runs_;  // which turn the buffered samples belong to, in order
    std::set<int> cut_;
    bool held_ = false;
    int playing_turn_ = -1;
    std::int64_t played_samples_ = 0;
    std::int64_t total_played_ = 0;
};

}  // namespace voxpipe

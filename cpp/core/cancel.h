// Stopping a long call from outside it. A CancelToken is a flag that any thread may set; a
// CancelCheck is what one call polls between its steps (decode steps, sequences, slices of a
// forward pass), so the call ends within one step of the token being set.
//
// A check also runs an optional poll hook, at most once per poll interval: the binding's hook
// runs Python's pending signal handlers, so Ctrl-C reaches a call that runs without the GIL.
// Whatever the hook throws leaves the call as Cancelled does.
//
// Thread-safety: a token is shared (cancel() from any thread); a CancelCheck belongs to the
// thread running the call and is polled only by it, never from the thread pool's workers.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <utility>

#include "core/errors.h"

namespace llmos {

class CancelToken {
 public:
  // A token is also cancelled when its parent is (a server's shutdown token as the parent of
  // each request's token, or a caller's token under a stream's own).
  explicit CancelToken(std::shared_ptr<const CancelToken> parent = nullptr) : parent_(std::move(parent)) {}

  void cancel() noexcept { flag_.store(true, std::memory_order_relaxed); }
  bool cancelled() const noexcept {
    return flag_.load(std::memory_order_relaxed) || (parent_ && parent_->cancelled());
  }

 private:
  std::atomic<bool> flag_{false};
  std::shared_ptr<const CancelToken> parent_;
};

class CancelCheck {
 public:
  using Hook = std::function<void()>;

  // Never cancels.
  CancelCheck() = default;
  // token may be null (only the hook); hook may be empty (only the token).
  CancelCheck(std::shared_ptr<const CancelToken> token, Hook hook, std::chrono::milliseconds poll_interval)
      : token_(std::move(token)), hook_(std::move(hook)), interval_(poll_interval) {}

  // Throws Error(Cancelled) once the token is set, or what the hook throws. Cheap enough for
  // every step: an atomic load, and with a hook a clock read.
  void operator()() {
    if (token_ && token_->cancelled())
      throw Error(Error::Kind::Cancelled, "", "cancel", "the call was cancelled by its CancelToken");
    if (!hook_ || std::chrono::steady_clock::now() < next_poll_) return;
    hook_();
    // Counted from the hook's end: a hook that waits (for the GIL) cannot take most of the time.
    next_poll_ = std::chrono::steady_clock::now() + interval_;
  }

 private:
  std::shared_ptr<const CancelToken> token_;
  Hook hook_;
  std::chrono::milliseconds interval_{0};
  std::chrono::steady_clock::time_point next_poll_{};
};

}  // namespace llmos

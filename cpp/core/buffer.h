// A 64-byte aligned, owned byte buffer (one cache line; what the widest SIMD loads want).
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace llmos {

class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(size_t bytes) { resize(bytes); }

  // Discards the contents when it grows. Never shrinks, so a reused scratch buffer stops
  // allocating once it has seen its largest size.
  void resize(size_t bytes) {
    if (bytes <= cap_) { size_ = bytes; return; }
    size_t rounded = (bytes + 63) & ~size_t(63);
    void* p = std::aligned_alloc(64, rounded ? rounded : 64);
    if (!p) throw std::bad_alloc();
    data_.reset(static_cast<uint8_t*>(p));
    cap_ = rounded;
    size_ = bytes;
  }

  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t size() const { return size_; }
  template <class T> T* as() { return reinterpret_cast<T*>(data_.get()); }
  template <class T> const T* as() const { return reinterpret_cast<const T*>(data_.get()); }

 private:
  struct Free { void operator()(uint8_t* p) const { std::free(p); } };
  std::unique_ptr<uint8_t, Free> data_;
  size_t size_ = 0, cap_ = 0;
};

}  // namespace llmos

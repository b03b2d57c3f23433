#include "core/bandwidth.h"

#include <chrono>
#include <atomic>
#include <cstdint>
#include <cstring>

#include "core/buffer.h"
#include "core/thread_pool.h"

namespace llmos {

double measure_read_bandwidth(int threads, size_t bytes, int reps) {
  ThreadPool pool(threads);
  const size_t n = bytes / sizeof(uint64_t);
  Buffer buf(n * sizeof(uint64_t));
  uint64_t* p = buf.as<uint64_t>();
  pool.parallel_for(int64_t(n), 1 << 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) p[i] = uint64_t(i);
  });
  double best = 0;
  volatile uint64_t sink = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    std::atomic<uint64_t> total{0};
    pool.parallel_for(int64_t(n), 1 << 16, [&](int64_t b, int64_t e) {
      uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      int64_t i = b;
      for (; i + 4 <= e; i += 4) { s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3]; }
      for (; i < e; ++i) s0 += p[i];
      total += s0 + s1 + s2 + s3;
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sink = sink + total.load();
    const double gbs = double(n * sizeof(uint64_t)) / s / 1e9;
    if (gbs > best) best = gbs;
  }
  (void)sink;
  return best;
}

}  // namespace llmos

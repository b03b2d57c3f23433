// A persistent pool of worker threads for the forward pass.
//
// The calling thread takes part in every job, so a pool of size N starts N-1 workers.
// Workers spin briefly after a job (the next op usually follows within microseconds),
// then sleep on a condition variable, so an idle model costs no CPU.
// run() is not reentrant and must be called from one thread at a time (the model's
// owner serializes calls).
//
// A pool has at most kMaxThreads threads (more is refused: Error(InvalidInput) naming
// "threads"). When a worker cannot be started (thread or memory limits), the ones already
// started are stopped and joined and the constructor throws Error(InvalidInput) naming
// "threads", so a caller gets an error rather than a half-built pool.
// A pool larger than the CPUs this process may run on does not spin: spinning threads
// would take the CPU from the ones holding work.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#endif

namespace llmos {

// Denormal floats are flushed to zero (FTZ) and read as zero (DAZ) while the pool computes
// (workers for life, the caller per job): on Intel CPUs an FMA that meets a denormal takes a microcode assist of ~100 cycles, and attention
// makes them (AVX-512's exp gives denormal probabilities for scores 87-104 below the max). A
// 1024-token float prefill at the avx512 level took 4.32 s with them and 0.49 s flushed
// (Sapphire Rapids, 1 thread). Values under 1.2e-38 carry nothing a logit can show. The caller's
// own mode is restored when the job returns, so numpy and Python code on that thread keep theirs.
#if defined(__x86_64__) || defined(_M_X64)
inline constexpr unsigned kFlushDenormals = 0x8040;  // MXCSR FTZ (bit 15) | DAZ (bit 6)
struct FlushDenormals {
  const unsigned saved = _mm_getcsr();
  FlushDenormals() { _mm_setcsr(saved | kFlushDenormals); }
  ~FlushDenormals() { _mm_setcsr(saved); }
};
#else
struct FlushDenormals {};  // AArch64: the NEON exp clamps at FLT_MIN, so it makes no denormals
#endif

class ThreadPool {
 public:
  static constexpr int kMaxThreads = 1024;

  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_threads_; }

  // Calls task(i) for every i in [0, n_tasks), spread over the threads; returns when all
  // are done. Tasks are handed out one at a time from a shared counter, so uneven tasks
  // balance themselves. Exceptions must not escape task.
  void run(int64_t n_tasks, const std::function<void(int64_t)>& task);

  // Splits [0, n) into chunks of at least `grain` items and calls body(begin, end).
  template <class F>
  void parallel_for(int64_t n, int64_t grain, F&& body) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    int64_t n_chunks = (n + grain - 1) / grain;
    int64_t max_chunks = int64_t(n_threads_) * 4;
    if (n_chunks > max_chunks) n_chunks = max_chunks;
    if (n_chunks <= 1 || n_threads_ == 1) {
      const FlushDenormals flush;
      body(int64_t(0), n);
      return;
    }
    const int64_t per = (n + n_chunks - 1) / n_chunks;
    run(n_chunks, [&](int64_t c) {
      int64_t b = c * per, e = b + per < n ? b + per : n;
      if (b < e) body(b, e);
    });
  }

 private:
  void worker_loop();
  void stop_and_join();
  void wait_step() const;
  void drain(const std::function<void(int64_t)>* task, int64_t n);

  int n_threads_;
  bool oversubscribed_ = false;  // more threads than CPUs: sleep at once, yield while waiting
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int64_t> next_{0};
  std::atomic<int64_t> done_{0};
  std::atomic<int> active_{0};
  int64_t n_tasks_ = 0;
  const std::function<void(int64_t)>* task_ = nullptr;
  bool stop_ = false;
};

}  // namespace llmos

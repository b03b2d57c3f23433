#include "core/thread_pool.h"

#include <chrono>
#include <string>

#if defined(__linux__)
#include <sched.h>
#endif

#include "core/errors.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define LLMOS_PAUSE() _mm_pause()
#else
#define LLMOS_PAUSE() std::this_thread::yield()
#endif

namespace llmos {

namespace {

// How long an idle worker polls for the next job before it sleeps. Decode issues a job
// every few microseconds, so a short spin saves a futex wake-up per op.
constexpr auto kSpin = std::chrono::microseconds(200);

int usable_cpus() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? int(n) : 1;
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
  if (n_threads_ > kMaxThreads)
    throw Error(Error::Kind::InvalidInput, "", "threads",
                std::to_string(n_threads) + " is more than the pool's limit of " + std::to_string(kMaxThreads));
  oversubscribed_ = n_threads_ > usable_cpus();
  workers_.reserve(size_t(n_threads_ - 1));
  for (int i = 1; i < n_threads_; ++i) {
    try {
      workers_.emplace_back([this] { worker_loop(); });
    } catch (const std::exception& e) {  // std::system_error, or std::bad_alloc for its state
      // The members (the condition variable above all) must not be destroyed under
      // running workers, so the ones started leave before the constructor throws.
      stop_and_join();
      throw Error(Error::Kind::InvalidInput, "", "threads",
                  "could not start thread " + std::to_string(i + 1) + " of " + std::to_string(n_threads_) + " (" +
                      e.what() + "); ask for fewer threads");
    }
  }
}

ThreadPool::~ThreadPool() { stop_and_join(); }

void ThreadPool::stop_and_join() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void ThreadPool::wait_step() const {
  if (oversubscribed_) std::this_thread::yield();
  else LLMOS_PAUSE();
}

void ThreadPool::drain(const std::function<void(int64_t)>* task, int64_t n) {
  int64_t finished = 0;
  for (;;) {
    int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
    if (i >= n) break;
    (*task)(i);
    ++finished;
  }
  if (finished) done_.fetch_add(finished, std::memory_order_acq_rel);
}

void ThreadPool::run(int64_t n_tasks, const std::function<void(int64_t)>& task) {
  if (n_tasks <= 0) return;
  const FlushDenormals flush;
  if (n_threads_ == 1 || n_tasks == 1) {
    for (int64_t i = 0; i < n_tasks; ++i) task(i);
    return;
  }
  {
    // A worker that woke late for the previous job may still hold its copy of the job;
    // it leaves at once (every task is taken), but must leave before the counters reset.
    std::unique_lock<std::mutex> lock(mu_);
    while (active_.load(std::memory_order_acquire) != 0) {
      lock.unlock();
      wait_step();
      lock.lock();
    }
    task_ = &task;
    n_tasks_ = n_tasks;
    next_.store(0, std::memory_order_relaxed);
    done_.store(0, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  drain(&task, n_tasks);
  // Wait for the tasks other threads took, and for every worker to leave drain() so the
  // next job cannot be mixed up with a straggler from this one.
  while (done_.load(std::memory_order_acquire) < n_tasks || active_.load(std::memory_order_acquire) != 0)
    wait_step();
}

void ThreadPool::worker_loop() {
  const FlushDenormals flush;  // for the worker's whole life
  uint64_t seen = 0;
  for (;;) {
    auto spin_until = std::chrono::steady_clock::now() + (oversubscribed_ ? std::chrono::microseconds(0) : kSpin);
    int polls = 0;
    while (generation_.load(std::memory_order_acquire) == seen) {
      LLMOS_PAUSE();
      if ((oversubscribed_ || ++polls % 64 == 0) && std::chrono::steady_clock::now() > spin_until) {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        break;
      }
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (stop_) return;
    seen = generation_.load(std::memory_order_acquire);
    // Copy the job under the lock: run() only changes it while no worker is active.
    active_.fetch_add(1, std::memory_order_acq_rel);
    const std::function<void(int64_t)>* task = task_;
    const int64_t n = n_tasks_;
    lock.unlock();
    drain(task, n);
    active_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace llmos

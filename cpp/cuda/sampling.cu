// Sampling on the device: one block per row of logits, nothing sorted. Every filter of
// sampling/warpers.cc used here keeps the tokens at or above a threshold of the (temperature
// scaled) score, so each becomes a threshold on the score's bits, ordered as integers
// (key(s) grows with s), found by building the threshold one bit at a time from the top: 32
// passes over the row, each a block reduction.
//   top-k: the largest key t with count(key >= t) >= k: the k-th largest score (ties kept).
//   top-p: transformers drops a token when the mass strictly above it is >= top_p (after
//          top-k); the mass above a key only falls as the key grows, so the dropped tokens are
//          those with key <= t, t the largest key whose mass above is still >= top_p.
//   min-p: p >= min_p * p_max, i.e. e^(s - max) >= min_p (the top token survives every filter).
// Then one draw by inverse CDF in token order: each thread sums a contiguous range, a scan
// over the threads finds the range holding u * Z, and that thread walks it. u comes from a
// counter-based hash of (seed, row, step), so a draw does not depend on launch order.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "cuda/cuda_check.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/reduce.cuh"

namespace llmos::cuda {

namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ uint32_t order_key(float s) {
  const uint32_t u = __float_as_uint(s);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Count of the block's predicates over the row, every thread gets it.
__device__ __forceinline__ int64_t block_count(int64_t c, unsigned long long* counter) {
  __syncthreads();
  if (threadIdx.x == 0) *counter = 0;
  __syncthreads();
  if (c) atomicAdd(counter, static_cast<unsigned long long>(c));
  __syncthreads();
  return int64_t(*counter);
}

__global__ void __launch_bounds__(kThreads)
sample_kernel(const float* __restrict__ logits, int64_t vocab, SampleParams p, int32_t* __restrict__ tokens,
              float* __restrict__ probs) {
  __shared__ float red[32];
  __shared__ unsigned long long counter;
  __shared__ float prefix[kThreads + 1];
  __shared__ int chosen;
  const int64_t row = blockIdx.x;
  const float* lr = logits + row * vocab;
  float* pr = probs + row * vocab;
  const int tid = threadIdx.x;

  if (p.greedy) {  // argmax, ties to the lowest id
    float best = -INFINITY;
    int64_t best_i = vocab;
    for (int64_t i = tid; i < vocab; i += kThreads)
      if (lr[i] > best || best_i == vocab) { best = lr[i]; best_i = i; }
    const float m = block_max(best, red);
    if (tid == 0) counter = static_cast<unsigned long long>(vocab);
    __syncthreads();
    if (best == m && best_i < vocab) atomicMin(&counter, static_cast<unsigned long long>(best_i));
    __syncthreads();
    const int64_t tok = int64_t(counter) < vocab ? int64_t(counter) : 0;  // a NaN row: 0, never out of range
    for (int64_t i = tid; i < vocab; i += kThreads) pr[i] = i == tok ? 1.f : 0.f;
    if (tid == 0) tokens[row] = int32_t(tok);
    return;
  }

  const float temp = p.temperature;  // divided, as the CPU's warper does (not times 1/T)
  float mx = -INFINITY;
  for (int64_t i = tid; i < vocab; i += kThreads) mx = fmaxf(mx, lr[i] / temp);
  mx = block_max(mx, red);
  if (mx == -INFINITY) {  // every token banned: token 0, as the CPU's draw over nothing
    for (int64_t i = tid; i < vocab; i += kThreads) pr[i] = 0.f;
    if (tid == 0) tokens[row] = 0;
    return;
  }

  // top-k
  uint32_t tk = 0;
  if (p.top_k > 0 && p.top_k < vocab) {
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = tk | (1u << bit);
      int64_t c = 0;
      for (int64_t i = tid; i < vocab; i += kThreads) c += order_key(lr[i] / temp) >= cand;
      if (block_count(c, &counter) >= p.top_k) tk = cand;
    }
  }
  // top-p over what top-k kept
  uint32_t tp_drop = 0;  // tokens with key <= tp_drop are dropped (when top-p is on)
  bool tp_on = p.top_p < 1.0f;
  if (tp_on) {
    float z = 0.f;
    for (int64_t i = tid; i < vocab; i += kThreads) {
      const float s = lr[i] / temp;
      if (order_key(s) >= tk) z += expf(s - mx);
    }
    const float target = p.top_p * block_sum(z, red);
    for (int bit = 31; bit >= 0; --bit) {
      const uint32_t cand = tp_drop | (1u << bit);
      float above = 0.f;
      for (int64_t i = tid; i < vocab; i += kThreads) {
        const float s = lr[i] / temp;
        const uint32_t key = order_key(s);
        if (key > cand && key >= tk) above += expf(s - mx);
      }
      if (block_sum(above, red) >= target) tp_drop = cand;
    }
  }

  // The kept weights, each thread's contiguous range, and their sums.
  const int64_t per = (vocab + kThreads - 1) / kThreads;
  const int64_t i0 = min(vocab, int64_t(tid) * per), i1 = min(vocab, i0 + per);
  float local = 0.f;
  for (int64_t i = i0; i < i1; ++i) {
    const float s = lr[i] / temp;
    const uint32_t key = order_key(s);
    const float e = expf(s - mx);
    const bool keep = key >= tk && (!tp_on || key > tp_drop) && (p.min_p <= 0.f || e >= p.min_p);
    pr[i] = keep ? e : 0.f;
    local += pr[i];
  }
  __syncthreads();
  prefix[tid + 1] = local;
  if (tid == 0) { prefix[0] = 0.f; chosen = -1; }
  __syncthreads();
  if (tid == 0)
    for (int t = 1; t <= kThreads; ++t) prefix[t] += prefix[t - 1];  // one thread: 1024 adds, exact order
  __syncthreads();
  const float total = prefix[kThreads];
  const uint64_t h = mix64(p.seed ^ mix64(uint64_t(row) ^ mix64(p.step)));
  const float u = float(h >> 40) * (1.0f / 16777216.0f);  // [0, 1), 24 bits
  const float target = u * total;
  if (prefix[tid] <= target && target < prefix[tid + 1]) {
    float c = prefix[tid];
    int last = -1;
    for (int64_t i = i0; i < i1; ++i) {
      if (pr[i] == 0.f) continue;
      c += pr[i];
      last = int(i);
      if (target < c) break;
    }
    chosen = last;  // one range holds the target: one writer
  }
  __syncthreads();
  const bool none = chosen < 0;  // read by every thread before anyone may change it
  __syncthreads();
  if (none) {  // the rounding slack at the top: the last kept token
    for (int64_t i = tid; i < vocab; i += kThreads)
      if (pr[i] > 0.f) atomicMax(&chosen, int(i));
    __syncthreads();
  }
  const float inv_total = 1.0f / total;
  for (int64_t i = tid; i < vocab; i += kThreads) pr[i] *= inv_total;
  if (tid == 0) tokens[row] = chosen;
}

}  // namespace

void sample(const float* logits, int64_t rows, int64_t vocab, const SampleParams& p, int32_t* tokens, float* probs,
            Stream s) {
  require(rows >= 1 && rows < (int64_t(1) << 31), "logits", "rows must be from 1 to 2**31 - 1");
  require(vocab >= 1 && vocab < (int64_t(1) << 31), "logits", "vocab must be from 1 to 2**31 - 1");
  require(p.greedy || (std::isfinite(p.temperature) && p.temperature > 0.f), "temperature", "must be > 0");
  require(p.top_k >= 0, "top_k", "must be >= 0 (0: off)");
  require(p.top_p > 0.f && p.top_p <= 1.0f, "top_p", "must be in (0, 1]");
  require(p.min_p >= 0.f && p.min_p <= 1.0f, "min_p", "must be in [0, 1]");
  require(logits && tokens && probs, "logits", "null device pointer");
  sample_kernel<<<unsigned(rows), kThreads, 0, s>>>(logits, vocab, p, tokens, probs);
  check_launch("sample");
}

}  // namespace llmos::cuda

// Split-K flash-decoding for one new token: attention of each head's query against a
// contiguous cache. Decode attention reads the whole cache for a single query, so it is split
// along the keys to fill the GPU: every (split, head) block keeps, per warp, a running max m,
// running sum l and the weighted sum of V (the online softmax), merges its warps, and writes
// (m, l, acc[D]) to the workspace; a second kernel merges the splits of each head:
//   out = sum_s e^(m_s - M) acc_s / sum_s e^(m_s - M) l_s,  M = max_s m_s.
// A warp computes one key's score at a time: lane i holds q and the accumulator for
// dimensions i, i + 32, ... (up to 8 of them: D <= 256), and the dot product is a warp sum.
#include <cuda_runtime.h>

#include <cmath>

#include "cuda/cuda_check.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/reduce.cuh"

namespace llmos::cuda {

namespace {

constexpr int kWarps = 4;
constexpr int kPerLane = int(kMaxAttentionHeadDim / 32);  // 8
constexpr int64_t kKeysPerSplit = 256;
constexpr int64_t kMaxSplits = 64;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }

// attention_splits() on either side: the kernels derive the splits from the keys they see.
__host__ __device__ __forceinline__ int64_t splits_for(int64_t len) {
  const int64_t s = (len + kKeysPerSplit - 1) / kKeysPerSplit;
  return s < 1 ? 1 : s > kMaxSplits ? kMaxSplits : s;
}

__global__ void __launch_bounds__(32 * kWarps)
attention_partial_kernel(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
                         int64_t heads, int64_t group, int64_t D, int64_t len, const int64_t* __restrict__ len_dev,
                         int64_t capacity, int64_t window, float scale, float softcap, float* __restrict__ ws) {
  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float sacc[kWarps][kMaxAttentionHeadDim];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (len_dev) len = *len_dev;
  const int64_t split = blockIdx.x, h = blockIdx.y, splits = splits_for(len);
  if (split >= splits) return;  // a graph's grid is sized for the longest cache
  const int64_t chunk = (len + splits - 1) / splits;
  const int64_t lo = window > 0 && len > window ? len - window : 0;  // first visible key
  const int64_t kvh = h / group;
  const float* kb = k + kvh * capacity * D;
  const float* vb = v + kvh * capacity * D;

  float qr[kPerLane], acc[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    qr[i] = d < D ? q[h * D + d] : 0.f;
    acc[i] = 0.f;
  }
  float m = neg_inf(), l = 0.f;
  const int64_t j0 = split * chunk, j1 = min(len, j0 + chunk);
  for (int64_t j = max(j0, lo) + warp; j < j1; j += kWarps) {  // uniform per warp
    const float* kr = kb + j * D;
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < D) s = fmaf(qr[i], kr[d], s);
    }
    s = warp_sum(s) * scale;
    if (softcap > 0.f) s = softcap * tanhf(s / softcap);
    const float m_new = fmaxf(m, s);
    const float corr = expf(m - m_new);  // m = -inf at the first key: 0
    const float p = expf(s - m_new);
    l = l * corr + p;
    const float* vr = vb + j * D;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < D) acc[i] = fmaf(p, vr[d], acc[i] * corr);
    }
    m = m_new;
  }

  // Merge the block's warps; a warp that saw no key has m = -inf and weighs 0.
  if (lane == 0) { sm[warp] = m; sl[warp] = l; }
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) {
    const int64_t d = lane + 32 * i;
    if (d < D) sacc[warp][d] = acc[i];
  }
  __syncthreads();
  float M = neg_inf();
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
  float wt[kWarps];
  float L = 0.f;
  for (int w = 0; w < kWarps; ++w) {
    wt[w] = sm[w] == neg_inf() ? 0.f : expf(sm[w] - M);
    L += wt[w] * sl[w];
  }
  float* out = ws + (h * splits + split) * (D + 2);
  if (threadIdx.x == 0) { out[0] = M; out[1] = L; }
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.f;
    for (int w = 0; w < kWarps; ++w) a += wt[w] * sacc[w][d];
    out[2 + d] = a;
  }
}

__global__ void attention_merge_kernel(const float* __restrict__ ws, int64_t len, const int64_t* __restrict__ len_dev,
                                       int64_t D, float* __restrict__ out) {
  const int64_t h = blockIdx.x;
  const int64_t splits = splits_for(len_dev ? *len_dev : len);
  const float* hw = ws + h * splits * (D + 2);
  float M = neg_inf();
  for (int64_t s = 0; s < splits; ++s) M = fmaxf(M, hw[s * (D + 2)]);
  float L = 0.f;
  for (int64_t s = 0; s < splits; ++s) {
    const float ms = hw[s * (D + 2)];
    if (ms != neg_inf()) L += expf(ms - M) * hw[s * (D + 2) + 1];
  }
  const float inv = 1.0f / L;  // L >= e^0 * 1: the query's own key is always visible
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float a = 0.f;
    for (int64_t s = 0; s < splits; ++s) {
      const float ms = hw[s * (D + 2)];
      if (ms != neg_inf()) a += expf(ms - M) * hw[s * (D + 2) + 2 + d];
    }
    out[h * D + d] = a * inv;
  }
}

}  // namespace

int64_t attention_splits(int64_t len) { return splits_for(len); }

int64_t attention_workspace_floats(int64_t heads, int64_t D, int64_t len) {
  return heads * attention_splits(len) * (D + 2);
}

void attention_decode(const DecodeAttention& a, float* workspace, Stream s) {
  require(a.heads >= 1 && a.heads < 65536 && a.kv_heads >= 1 && a.heads % a.kv_heads == 0, "heads",
          "must be from 1 to 65535 and a multiple of kv_heads");
  require(a.D >= 1 && a.D <= kMaxAttentionHeadDim, "D", "head_dim must be from 1 to 256");
  require(a.len >= 1 && a.len <= a.capacity, "len", "must be from 1 to the cache capacity");
  require(a.window >= 0, "window", "must be >= 0 (0: every key)");
  require(std::isfinite(a.scale) && a.softcap >= 0.f, "scale", "scale must be finite and softcap >= 0");
  require(a.q && a.k && a.v && a.out && workspace, "q", "null device pointer");
  const int64_t splits = attention_splits(a.len);  // with len_dev: the most the device's len may need
  attention_partial_kernel<<<dim3(unsigned(splits), unsigned(a.heads)), 32 * kWarps, 0, s>>>(
      a.q, a.k, a.v, a.heads, a.heads / a.kv_heads, a.D, a.len, a.len_dev, a.capacity, a.window, a.scale, a.softcap,
      workspace);
  check_launch("attention_decode (partial)");
  attention_merge_kernel<<<unsigned(a.heads), 128, 0, s>>>(workspace, a.len, a.len_dev, a.D, a.out);
  check_launch("attention_decode (merge)");
}

}  // namespace llmos::cuda

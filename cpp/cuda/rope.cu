// RoPE on the device: rope_head's rotate-half rotation of the first rotary_dim values of
// every head, one thread per rotated pair, from per-token cos / sin tables.
#include <cuda_runtime.h>

#include "cuda/cuda_check.cuh"
#include "cuda/cuda_ops.h"

namespace llmos::cuda {

namespace {

__global__ void rope_kernel(float* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t half,
                            const float* __restrict__ cos_t, const float* __restrict__ sin_t) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t total = tokens * heads * half;
  if (idx >= total) return;
  const int64_t i = idx % half, th = idx / half;  // th = token * heads + head
  const int64_t t = th / heads;
  float* h = x + th * head_dim;
  const float c = cos_t[t * half + i], s = sin_t[t * half + i];
  const float a = h[i], b = h[i + half];
  h[i] = a * c - b * s;
  h[i + half] = b * c + a * s;
}

}  // namespace

void rope(float* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t rotary_dim, const float* cos_t,
          const float* sin_t, Stream s) {
  require(tokens >= 1 && heads >= 1 && head_dim >= 1, "x", "expected x [tokens >= 1, heads >= 1, head_dim >= 1]");
  require(rotary_dim >= 2 && rotary_dim % 2 == 0 && rotary_dim <= head_dim, "rotary_dim",
          "must be even, from 2 to head_dim");
  require(x && cos_t && sin_t, "x", "null device pointer");
  const int64_t half = rotary_dim / 2, total = tokens * heads * half;
  constexpr int kThreads = 256;
  require(total / kThreads < (int64_t(1) << 31) - 1, "x", "too many values for one launch");
  rope_kernel<<<unsigned((total + kThreads - 1) / kThreads), kThreads, 0, s>>>(x, tokens, heads, head_dim, half,
                                                                               cos_t, sin_t);
  check_launch("rope");
}

}  // namespace llmos::cuda

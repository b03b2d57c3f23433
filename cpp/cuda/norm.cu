// RMSNorm, one block per row: the mean square is a block reduction, then each thread scales
// its strided values (norm_row's RMSNorm without a bias).
#include <cuda_runtime.h>

#include "cuda/cuda_check.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/reduce.cuh"

namespace llmos::cuda {

namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
rms_norm_kernel(const float* x, const float* __restrict__ w, float eps, int64_t n, float* out) {
  __shared__ float red[32];
  const float* xr = x + int64_t(blockIdx.x) * n;
  float* orow = out + int64_t(blockIdx.x) * n;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
  ss = block_sum(ss, red);
  const float r = 1.0f / sqrtf(ss / float(n) + eps);
  // out may alias x: each value is read and written by the same thread, after the sum.
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) orow[i] = xr[i] * r * w[i];
}

}  // namespace

void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t n, float* out, Stream s) {
  require(rows >= 1 && rows < (int64_t(1) << 31), "x", "rows must be from 1 to 2**31 - 1");
  require(n >= 1, "x", "rows must have at least one value");
  require(eps >= 0.f, "eps", "must be >= 0");
  require(x && w && out, "x", "null device pointer");
  rms_norm_kernel<<<unsigned(rows), kThreads, 0, s>>>(x, w, eps, n, out);
  check_launch("rms_norm");
}

}  // namespace llmos::cuda

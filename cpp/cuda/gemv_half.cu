// Matrix-vector products over float16 / bfloat16 weights for decode: y[t, r] = x[t] . W[r],
// up to 16 tokens, one warp per row, 8 weights per 16-byte load, float32 accumulation.
// Rows whose width is not a multiple of 8 (or a misaligned W or x) take the one-value-a-lane
// loop instead of the 16-byte one.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/cuda_check.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/reduce.cuh"

namespace llmos::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;

template <bool Bf16>
__device__ __forceinline__ float to_float(uint16_t b) {
  if (Bf16) return __uint_as_float(uint32_t(b) << 16);
  return __half2float(__ushort_as_half(b));
}

template <int M, bool Bf16, bool Vec>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
gemv_half_kernel(const uint16_t* __restrict__ w, int64_t rows, int64_t cols, const float* __restrict__ x, int m,
                 float* __restrict__ y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;  // whole warp
  const uint16_t* wr = w + r * cols;
  float acc[M];
#pragma unroll
  for (int t = 0; t < M; ++t) acc[t] = 0.f;

  if (Vec) {
    const int64_t units = cols / 8;
#pragma unroll 2
    for (int64_t u = lane; u < units; u += 32) {
      const uint4 b = __ldg(reinterpret_cast<const uint4*>(wr) + u);
      const uint32_t p[4] = {b.x, b.y, b.z, b.w};
      float wv[8];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        wv[2 * j] = to_float<Bf16>(uint16_t(p[j] & 0xffffu));
        wv[2 * j + 1] = to_float<Bf16>(uint16_t(p[j] >> 16));
      }
#pragma unroll
      for (int t = 0; t < M; ++t) {
        if (t < m) {
          const float4* xp = reinterpret_cast<const float4*>(x + int64_t(t) * cols + u * 8);
          const float4 a = __ldg(xp), c = __ldg(xp + 1);
          float s = acc[t];
          s = fmaf(wv[0], a.x, s); s = fmaf(wv[1], a.y, s); s = fmaf(wv[2], a.z, s); s = fmaf(wv[3], a.w, s);
          s = fmaf(wv[4], c.x, s); s = fmaf(wv[5], c.y, s); s = fmaf(wv[6], c.z, s); s = fmaf(wv[7], c.w, s);
          acc[t] = s;
        }
      }
    }
  } else {
    for (int64_t c = lane; c < cols; c += 32) {
      const float wv = to_float<Bf16>(wr[c]);
#pragma unroll
      for (int t = 0; t < M; ++t)
        if (t < m) acc[t] = fmaf(wv, x[int64_t(t) * cols + c], acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < M; ++t) {
    if (t < m) {
      const float s = warp_sum(acc[t]);
      if (lane == 0) y[int64_t(t) * ldy + r] = s;
    }
  }
}

template <int M, bool Bf16>
void launch(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int m, float* y, int64_t ldy, bool vec,
            Stream s) {
  const dim3 grid(unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock)), block(32 * kWarpsPerBlock);
  if (vec) gemv_half_kernel<M, Bf16, true><<<grid, block, 0, s>>>(w, rows, cols, x, m, y, ldy);
  else gemv_half_kernel<M, Bf16, false><<<grid, block, 0, s>>>(w, rows, cols, x, m, y, ldy);
  check_launch("gemv_half");
}

template <bool Bf16>
void dispatch(const uint16_t* w, int64_t rows, int64_t cols, const float* x, int m, float* y, int64_t ldy, bool vec,
              Stream s) {
  if (m == 1) launch<1, Bf16>(w, rows, cols, x, m, y, ldy, vec, s);
  else if (m == 2) launch<2, Bf16>(w, rows, cols, x, m, y, ldy, vec, s);
  else if (m <= 4) launch<4, Bf16>(w, rows, cols, x, m, y, ldy, vec, s);
  else if (m <= 8) launch<8, Bf16>(w, rows, cols, x, m, y, ldy, vec, s);
  else launch<16, Bf16>(w, rows, cols, x, m, y, ldy, vec, s);
}

// float32 weights (checkpoints kept in float32): 4 weights per 16-byte load.
template <int M, bool Vec>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
gemv_float_kernel(const float* __restrict__ w, int64_t rows, int64_t cols, const float* __restrict__ x, int m,
                  float* __restrict__ y, int64_t ldy) {
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;  // whole warp
  const float* wr = w + r * cols;
  float acc[M];
#pragma unroll
  for (int t = 0; t < M; ++t) acc[t] = 0.f;
  if (Vec) {
    const int64_t units = cols / 4;
#pragma unroll 4
    for (int64_t u = lane; u < units; u += 32) {
      const float4 b = __ldg(reinterpret_cast<const float4*>(wr) + u);
#pragma unroll
      for (int t = 0; t < M; ++t) {
        if (t < m) {
          const float4 a = __ldg(reinterpret_cast<const float4*>(x + int64_t(t) * cols) + u);
          float s = acc[t];
          s = fmaf(b.x, a.x, s); s = fmaf(b.y, a.y, s); s = fmaf(b.z, a.z, s); s = fmaf(b.w, a.w, s);
          acc[t] = s;
        }
      }
    }
  } else {
    for (int64_t c = lane; c < cols; c += 32) {
      const float wv = wr[c];
#pragma unroll
      for (int t = 0; t < M; ++t)
        if (t < m) acc[t] = fmaf(wv, x[int64_t(t) * cols + c], acc[t]);
    }
  }
#pragma unroll
  for (int t = 0; t < M; ++t) {
    if (t < m) {
      const float s = warp_sum(acc[t]);
      if (lane == 0) y[int64_t(t) * ldy + r] = s;
    }
  }
}

template <int M>
void launch_float(const float* w, int64_t rows, int64_t cols, const float* x, int m, float* y, int64_t ldy, bool vec,
                  Stream s) {
  const dim3 grid(unsigned((rows + kWarpsPerBlock - 1) / kWarpsPerBlock)), block(32 * kWarpsPerBlock);
  if (vec) gemv_float_kernel<M, true><<<grid, block, 0, s>>>(w, rows, cols, x, m, y, ldy);
  else gemv_float_kernel<M, false><<<grid, block, 0, s>>>(w, rows, cols, x, m, y, ldy);
  check_launch("gemv_float");
}

}  // namespace

void gemv_half(DType wtype, const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t m, float* y,
               int64_t ldy, Stream s) {
  require(wtype == DType::F16 || wtype == DType::BF16, "w_dtype", "expected float16 or bfloat16 weights");
  require(rows > 0 && rows < (int64_t(1) << 31) / kWarpsPerBlock * kWarpsPerBlock, "w", "rows must be from 1 to 2**31 - 4");
  require(cols > 0, "w", "cols must be positive");
  require(m >= 1 && m <= kMaxGemvTokens, "x", "expected 1 to 16 tokens");
  require(ldy >= rows, "ldy", "must be >= the rows of w");
  require(w && x && y, "w", "null device pointer");
  const bool vec = cols % 8 == 0 && (reinterpret_cast<uintptr_t>(w) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(x) & 15u) == 0;
  if (wtype == DType::BF16) dispatch<true>(w, rows, cols, x, int(m), y, ldy, vec, s);
  else dispatch<false>(w, rows, cols, x, int(m), y, ldy, vec, s);
}

void gemv_float(const float* w, int64_t rows, int64_t cols, const float* x, int64_t m, float* y, int64_t ldy,
                Stream s) {
  require(rows > 0 && rows < (int64_t(1) << 31) / kWarpsPerBlock * kWarpsPerBlock, "w", "rows must be from 1 to 2**31 - 4");
  require(cols > 0, "w", "cols must be positive");
  require(m >= 1 && m <= kMaxGemvTokens, "x", "expected 1 to 16 tokens");
  require(ldy >= rows, "ldy", "must be >= the rows of w");
  require(w && x && y, "w", "null device pointer");
  const bool vec = cols % 4 == 0 && (reinterpret_cast<uintptr_t>(w) & 15u) == 0 &&
                   (reinterpret_cast<uintptr_t>(x) & 15u) == 0;
  const int mi = int(m);
  if (mi == 1) launch_float<1>(w, rows, cols, x, mi, y, ldy, vec, s);
  else if (mi == 2) launch_float<2>(w, rows, cols, x, mi, y, ldy, vec, s);
  else if (mi <= 4) launch_float<4>(w, rows, cols, x, mi, y, ldy, vec, s);
  else if (mi <= 8) launch_float<8>(w, rows, cols, x, mi, y, ldy, vec, s);
  else launch_float<16>(w, rows, cols, x, mi, y, ldy, vec, s);
}

}  // namespace llmos::cuda

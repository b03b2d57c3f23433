// Matrix-vector products over llmos's block-quantized weights (quant/qformat.h) for decode:
// y[t, r] = x[t] . dequantize(W[r]) for up to 16 tokens. Decode is bound by reading W, so
// each warp streams one row with 16-byte loads, turns the codes into floats in registers
// (never writing a dequantized copy) and keeps one accumulator per token; the activations
// are read through the cache (every row reads the same x).
//
// Units of one 16-byte load per lane:
//   Q8:           16 codes, one group.
//   Q4, Q4_ASYM:  half of a 64-value chunk: byte i holds u[16h + i] (low nibble) and
//                 u[32 + 16h + i] (high nibble): two runs of 16 values, each within a group.
//   Q6:           the same 16 low-nibble bytes plus the chunk's 16 high-bit bytes (another
//                 16-byte load): bits 2h..2h+1 of byte i top up u[16h + i], bits 2(h+2).. of
//                 byte i top up u[32 + 16h + i].
// Symmetric formats dequantize as d * (u - zero_point), so the codes are centred before the
// dot product (d * sum((u - z) x) keeps the precision that d * sum(u x) - z d sum(x) loses);
// Q4_ASYM is d * sum(u x) + m * sum(x).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/cuda_check.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/reduce.cuh"

namespace llmos::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;  // one row per warp

__device__ __forceinline__ float half_bits(uint16_t b) { return __half2float(__ushort_as_half(b)); }

// acc[t] += d * sum_i(q[i] * x[t, c + i]) (+ m * sum_i x[t, c + i] when Asym), t < m.
template <int M, bool Asym>
__device__ __forceinline__ void dot16(const float (&q)[16], const float* __restrict__ x, int64_t cols, int64_t c,
                                      int m, float d, float mn, float (&acc)[M]) {
#pragma unroll
  for (int t = 0; t < M; ++t) {
    if (t < m) {
      const float4* xp = reinterpret_cast<const float4*>(x + int64_t(t) * cols + c);
      float s = 0.f, sx = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float4 v = __ldg(xp + j);
        s = fmaf(q[4 * j + 0], v.x, s);
        s = fmaf(q[4 * j + 1], v.y, s);
        s = fmaf(q[4 * j + 2], v.z, s);
        s = fmaf(q[4 * j + 3], v.w, s);
        if (Asym) sx += (v.x + v.y) + (v.z + v.w);
      }
      acc[t] = fmaf(d, s, acc[t]);
      if (Asym) acc[t] = fmaf(mn, sx, acc[t]);
    }
  }
}

// The 16 bytes of a uint4 as codes (byte i of the load -> q[i]), each minus `zero`.
__device__ __forceinline__ void bytes16(const uint4 b, float zero, float (&q)[16]) {
  const uint32_t w[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
  for (int j = 0; j < 4; ++j)
#pragma unroll
    for (int k = 0; k < 4; ++k) q[4 * j + k] = float((w[j] >> (8 * k)) & 0xffu) - zero;
}

// Nibbles of the 16 bytes: low (hi = false) or high, plus `top` (2 bits per byte already
// placed at bits 4-5: Q6), minus `zero`.
__device__ __forceinline__ void nibbles16(const uint4 b, bool hi, const uint4 top, float zero, float (&q)[16]) {
  const uint32_t w[4] = {b.x, b.y, b.z, b.w};
  const uint32_t t[4] = {top.x, top.y, top.z, top.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t n = hi ? (w[j] >> 4) & 0x0f0f0f0fu : w[j] & 0x0f0f0f0fu;
    const uint32_t u = n | t[j];
#pragma unroll
    for (int k = 0; k < 4; ++k) q[4 * j + k] = float((u >> (8 * k)) & 0xffu) - zero;
  }
}

template <int M, int QT>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
gemv_quant_kernel(const uint8_t* __restrict__ codes, const uint16_t* __restrict__ scale,
                  const uint16_t* __restrict__ mins, int64_t rows, int64_t cols, int64_t group,
                  const float* __restrict__ x, int m, float* __restrict__ y, int64_t ldy) {
  constexpr bool kQ8 = QT == int(QuantType::Q8), kQ6 = QT == int(QuantType::Q6);
  constexpr bool kAsym = QT == int(QuantType::Q4Asym);
  const float zero = kQ8 ? 128.f : kQ6 ? 32.f : kAsym ? 0.f : 8.f;
  const int lane = threadIdx.x & 31;
  const int64_t r = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= rows) return;  // the whole warp leaves together: no shuffle below misses a lane

  const int64_t row_bytes = kQ8 ? cols : kQ6 ? cols / 64 * 48 : cols / 2;
  const uint8_t* wr = codes + r * row_bytes;
  const int64_t groups = cols / group;
  const uint16_t* sr = scale + r * groups;
  const uint16_t* mr = kAsym ? mins + r * groups : nullptr;

  float acc[M];
#pragma unroll
  for (int t = 0; t < M; ++t) acc[t] = 0.f;

  float q[16];
  if (kQ8) {
    const int64_t units = cols / 16;
#pragma unroll 2
    for (int64_t u = lane; u < units; u += 32) {
      const uint4 b = __ldg(reinterpret_cast<const uint4*>(wr) + u);
      const int64_t c = u * 16;
      bytes16(b, zero, q);
      dot16<M, false>(q, x, cols, c, m, half_bits(sr[c / group]), 0.f, acc);
    }
  } else {
    const int64_t units = cols / 32;  // half chunks
#pragma unroll 2
    for (int64_t u = lane; u < units; u += 32) {
      const int64_t chunk = u >> 1;
      const int h = int(u & 1);
      const uint8_t* base = wr + chunk * (kQ6 ? 48 : 32);
      const uint4 b = __ldg(reinterpret_cast<const uint4*>(base) + h);
      uint4 top_lo = make_uint4(0, 0, 0, 0), top_hi = top_lo;
      if (kQ6) {
        const uint4 hb = __ldg(reinterpret_cast<const uint4*>(base + 32));
        // bits 2h..2h+1 (low run) and 2h+4.. (high run) of each byte, moved to bits 4-5
        const int sl = 2 * h, sh = 2 * h + 4;
        auto pick = [](uint32_t v, int s) { return ((v >> s) & 0x03030303u) << 4; };
        top_lo = make_uint4(pick(hb.x, sl), pick(hb.y, sl), pick(hb.z, sl), pick(hb.w, sl));
        top_hi = make_uint4(pick(hb.x, sh), pick(hb.y, sh), pick(hb.z, sh), pick(hb.w, sh));
      }
      const int64_t c_lo = chunk * 64 + 16 * h, c_hi = c_lo + 32;
      nibbles16(b, false, top_lo, zero, q);
      dot16<M, kAsym>(q, x, cols, c_lo, m, half_bits(sr[c_lo / group]), kAsym ? half_bits(mr[c_lo / group]) : 0.f,
                      acc);
      nibbles16(b, true, top_hi, zero, q);
      dot16<M, kAsym>(q, x, cols, c_hi, m, half_bits(sr[c_hi / group]), kAsym ? half_bits(mr[c_hi / group]) : 0.f,
                      acc);
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

// One token (decode): a block of 4 warps takes R rows at once and its 128 threads stride over
// the rows' 16-byte units together. Each thread loads the unit's activations once and reuses
// them for the R rows (the kernel above reads x once per row, 2-8 times the weight bytes, which
// bounded it by L1 traffic at a fifth of the HBM bandwidth), and keeps R independent 16-byte
// weight loads in flight. Threads sum their rows' partials in a warp, then across the 4 warps
// through shared memory. Rows past the end repeat the last row and are not stored.
constexpr int kOneTokThreads = 128;

template <int QT>
constexpr int one_token_rows() {
  return QT == int(QuantType::Q8) ? 4 : 8;  // x is 4 (int8) or 8 (4-bit) times the weight bytes
}

template <int QT, int R>
__global__ void __launch_bounds__(kOneTokThreads)
gemv_quant_one_token_kernel(const uint8_t* __restrict__ codes, const uint16_t* __restrict__ scale,
                            const uint16_t* __restrict__ mins, int64_t rows, int64_t cols, int64_t group,
                            const float* __restrict__ x, float* __restrict__ y) {
  constexpr bool kQ8 = QT == int(QuantType::Q8), kQ6 = QT == int(QuantType::Q6);
  constexpr bool kAsym = QT == int(QuantType::Q4Asym);
  const float zero = kQ8 ? 128.f : kQ6 ? 32.f : kAsym ? 0.f : 8.f;
  __shared__ float part[kOneTokThreads / 32][R];
  const int64_t r0 = int64_t(blockIdx.x) * R;
  const int64_t row_bytes = kQ8 ? cols : kQ6 ? cols / 64 * 48 : cols / 2;
  const int64_t groups = cols / group;
  int64_t row[R];
#pragma unroll
  for (int i = 0; i < R; ++i) row[i] = r0 + i < rows ? r0 + i : rows - 1;

  float acc[R];
#pragma unroll
  for (int i = 0; i < R; ++i) acc[i] = 0.f;
  float q[16];
  if (kQ8) {
    const int64_t units = cols / 16;
    for (int64_t u = threadIdx.x; u < units; u += kOneTokThreads) {
      const int64_t c = u * 16;
      const float4* xp = reinterpret_cast<const float4*>(x + c);
      float xv[16];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float4 v = __ldg(xp + j);
        xv[4 * j] = v.x, xv[4 * j + 1] = v.y, xv[4 * j + 2] = v.z, xv[4 * j + 3] = v.w;
      }
      uint4 b[R];
#pragma unroll
      for (int i = 0; i < R; ++i) b[i] = __ldg(reinterpret_cast<const uint4*>(codes + row[i] * row_bytes) + u);
#pragma unroll
      for (int i = 0; i < R; ++i) {
        bytes16(b[i], zero, q);
        float sdot = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) sdot = fmaf(q[j], xv[j], sdot);
        acc[i] = fmaf(half_bits(scale[row[i] * groups + c / group]), sdot, acc[i]);
      }
    }
  } else {
    const int64_t units = cols / 32;  // half chunks: two runs of 16 values
    for (int64_t u = threadIdx.x; u < units; u += kOneTokThreads) {
      const int64_t chunk = u >> 1;
      const int h = int(u & 1);
      const int64_t c_lo = chunk * 64 + 16 * h, c_hi = c_lo + 32;
      float xlo[16], xhi[16];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float4 a = __ldg(reinterpret_cast<const float4*>(x + c_lo) + j);
        const float4 v = __ldg(reinterpret_cast<const float4*>(x + c_hi) + j);
        xlo[4 * j] = a.x, xlo[4 * j + 1] = a.y, xlo[4 * j + 2] = a.z, xlo[4 * j + 3] = a.w;
        xhi[4 * j] = v.x, xhi[4 * j + 1] = v.y, xhi[4 * j + 2] = v.z, xhi[4 * j + 3] = v.w;
      }
      float sx_lo = 0.f, sx_hi = 0.f;
      if (kAsym) {
#pragma unroll
        for (int j = 0; j < 16; ++j) sx_lo += xlo[j], sx_hi += xhi[j];
      }
      uint4 b[R], hb[R];
#pragma unroll
      for (int i = 0; i < R; ++i) {
        const uint8_t* base = codes + row[i] * row_bytes + chunk * (kQ6 ? 48 : 32);
        b[i] = __ldg(reinterpret_cast<const uint4*>(base) + h);
        if (kQ6) hb[i] = __ldg(reinterpret_cast<const uint4*>(base + 32));
      }
#pragma unroll
      for (int i = 0; i < R; ++i) {
        uint4 top_lo = make_uint4(0, 0, 0, 0), top_hi = top_lo;
        if (kQ6) {
          const int sl = 2 * h, sh = 2 * h + 4;
          auto pick = [](uint32_t v, int s) { return ((v >> s) & 0x03030303u) << 4; };
          top_lo = make_uint4(pick(hb[i].x, sl), pick(hb[i].y, sl), pick(hb[i].z, sl), pick(hb[i].w, sl));
          top_hi = make_uint4(pick(hb[i].x, sh), pick(hb[i].y, sh), pick(hb[i].z, sh), pick(hb[i].w, sh));
        }
        const uint16_t* sr = scale + row[i] * groups;
        nibbles16(b[i], false, top_lo, zero, q);
        float s_lo = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) s_lo = fmaf(q[j], xlo[j], s_lo);
        nibbles16(b[i], true, top_hi, zero, q);
        float s_hi = 0.f;
#pragma unroll
        for (int j = 0; j < 16; ++j) s_hi = fmaf(q[j], xhi[j], s_hi);
        acc[i] = fmaf(half_bits(sr[c_lo / group]), s_lo, acc[i]);
        acc[i] = fmaf(half_bits(sr[c_hi / group]), s_hi, acc[i]);
        if (kAsym) {
          const uint16_t* mr = mins + row[i] * groups;
          acc[i] = fmaf(half_bits(mr[c_lo / group]), sx_lo, acc[i]);
          acc[i] = fmaf(half_bits(mr[c_hi / group]), sx_hi, acc[i]);
        }
      }
    }
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const float v = warp_sum(acc[i]);
    if (lane == 0) part[warp][i] = v;
  }
  __syncthreads();
  if (threadIdx.x < R && r0 + threadIdx.x < rows) {
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < kOneTokThreads / 32; ++w) v += part[w][threadIdx.x];
    y[r0 + threadIdx.x] = v;
  }
}

template <int QT>
void launch_one_token(const QView& w, const float* x, float* y, Stream s) {
  constexpr int R = one_token_rows<QT>();
  const unsigned grid = unsigned((w.rows + R - 1) / R);
  gemv_quant_one_token_kernel<QT, R><<<grid, kOneTokThreads, 0, s>>>(w.codes, w.scale, w.min, w.rows, w.cols,
                                                                      w.group, x, y);
}

template <int M>
void launch(const QView& w, const float* x, int m, float* y, int64_t ldy, Stream s) {
  const dim3 grid(unsigned((w.rows + kWarpsPerBlock - 1) / kWarpsPerBlock)), block(32 * kWarpsPerBlock);
  switch (w.type) {
    case QuantType::Q8:
      gemv_quant_kernel<M, int(QuantType::Q8)><<<grid, block, 0, s>>>(w.codes, w.scale, w.min, w.rows, w.cols,
                                                                       w.group, x, m, y, ldy);
      break;
    case QuantType::Q4:
      gemv_quant_kernel<M, int(QuantType::Q4)><<<grid, block, 0, s>>>(w.codes, w.scale, w.min, w.rows, w.cols,
                                                                       w.group, x, m, y, ldy);
      break;
    case QuantType::Q4Asym:
      gemv_quant_kernel<M, int(QuantType::Q4Asym)><<<grid, block, 0, s>>>(w.codes, w.scale, w.min, w.rows,
                                                                           w.cols, w.group, x, m, y, ldy);
      break;
    case QuantType::Q6:
      gemv_quant_kernel<M, int(QuantType::Q6)><<<grid, block, 0, s>>>(w.codes, w.scale, w.min, w.rows, w.cols,
                                                                       w.group, x, m, y, ldy);
      break;
    default: break;  // refused by gemv_quant
  }
  check_launch("gemv_quant");
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

void gemv_quant(const QView& w, const float* x, int64_t m, float* y, int64_t ldy, Stream s) {
  require(w.type == QuantType::Q8 || w.type == QuantType::Q4 || w.type == QuantType::Q4Asym ||
              w.type == QuantType::Q6,
          "quant", "expected a quantized matrix (int8, int4, int4-asym or int6)");
  require(w.group >= 32 && w.group % 32 == 0, "group", "must be a positive multiple of 32");
  require(w.rows > 0 && w.rows < (int64_t(1) << 31) / kWarpsPerBlock * kWarpsPerBlock, "w",
          "rows must be from 1 to 2**31 - 4");
  require(w.cols > 0 && w.cols % w.group == 0 && (w.type == QuantType::Q8 || w.cols % 64 == 0), "w",
          "cols must be a positive multiple of the group (and of 64 for the 4- and 6-bit formats)");
  require(m >= 1 && m <= kMaxGemvTokens, "x", "expected 1 to 16 tokens");
  require(ldy >= w.rows, "ldy", "must be >= the rows of w");
  require(w.codes && w.scale && (w.type != QuantType::Q4Asym || w.min) && x && y, "w", "null device pointer");
  // 16-byte loads: every row starts 16-byte aligned when the codes do (row bytes are
  // multiples of 16 for these widths), and so does every token's x when x does.
  require(aligned16(w.codes) && aligned16(x), "x", "the codes and x must be 16-byte aligned on the device");
  const int mi = int(m);
  if (mi == 1) {
    switch (w.type) {
      case QuantType::Q8: launch_one_token<int(QuantType::Q8)>(w, x, y, s); break;
      case QuantType::Q4: launch_one_token<int(QuantType::Q4)>(w, x, y, s); break;
      case QuantType::Q4Asym: launch_one_token<int(QuantType::Q4Asym)>(w, x, y, s); break;
      default: launch_one_token<int(QuantType::Q6)>(w, x, y, s); break;
    }
    check_launch("gemv_quant (one token)");
  }
  else if (mi == 2) launch<2>(w, x, mi, y, ldy, s);
  else if (mi <= 4) launch<4>(w, x, mi, y, ldy, s);
  else if (mi <= 8) launch<8>(w, x, mi, y, ldy, s);
  else launch<16>(w, x, mi, y, ldy, s);
}

}  // namespace llmos::cuda

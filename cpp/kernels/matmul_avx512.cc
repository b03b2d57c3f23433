// AVX-512 kernels (compiled with -mavx512f/bw/vl/dq/bf16). Weights of every float type
// are widened to float32 in registers and multiplied with FMA; a tile of up to 4 weight
// rows x 4 tokens keeps 16 accumulators in registers so each weight load feeds 4 FMAs.
#include <immintrin.h>

#include "kernels/kernels.h"

namespace llmos {
namespace {

// Loads 16 weights starting at element i, widened to float32; lanes past `mask` are 0.
struct LoadF32 {
  static __m512 load(const void* w, int64_t i, __mmask16 m) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(w) + i);
  }
};
struct LoadBF16 {
  static __m512 load(const void* w, int64_t i, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(w) + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
};
struct LoadF16 {
  static __m512 load(const void* w, int64_t i, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(w) + i);
    return _mm512_cvtph_ps(h);
  }
};

template <class L, int R, int T>
void tile(const float* x, int64_t k, const void* w, int64_t r0, float* y, int64_t ldy, int64_t t0,
          int64_t row_out0) {
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 16) {
    const __mmask16 m = (k - i >= 16) ? __mmask16(0xffff) : __mmask16((1u << (k - i)) - 1);
    __m512 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + (t0 + t) * k + i);
    for (int r = 0; r < R; ++r) {
      __m512 wv = L::load(w, (r0 + r) * k + i, m);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) y[(t0 + t) * ldy + row_out0 + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <class L, int R>
void rows_block(const float* x, int64_t n, int64_t k, const void* w, int64_t r0, float* y,
                int64_t ldy, int64_t row_out0) {
  int64_t t = 0;
  for (; t + 4 <= n; t += 4) tile<L, R, 4>(x, k, w, r0, y, ldy, t, row_out0);
  switch (n - t) {
    case 3: tile<L, R, 3>(x, k, w, r0, y, ldy, t, row_out0); break;
    case 2: tile<L, R, 2>(x, k, w, r0, y, ldy, t, row_out0); break;
    case 1: tile<L, R, 1>(x, k, w, r0, y, ldy, t, row_out0); break;
    default: break;
  }
}

template <class L>
void matmul(const float* x, int64_t n, int64_t k, const void* w, int64_t row0, int64_t row1,
            float* y, int64_t ldy) {
  int64_t r = row0;
  for (; r + 4 <= row1; r += 4) rows_block<L, 4>(x, n, k, w, r, y, ldy, r - row0);
  switch (row1 - r) {
    case 3: rows_block<L, 3>(x, n, k, w, r, y, ldy, r - row0); break;
    case 2: rows_block<L, 2>(x, n, k, w, r, y, ldy, r - row0); break;
    case 1: rows_block<L, 1>(x, n, k, w, r, y, ldy, r - row0); break;
    default: break;
  }
}

float dot(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = (n - i >= 16) ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

void axpy(float* y, float a, const float* x, int64_t n) {
  const __m512 av = _mm512_set1_ps(a);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = (n - i >= 16) ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    __m512 yv = _mm512_maskz_loadu_ps(m, y + i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i), yv));
  }
}

}  // namespace

void fill_kernels_avx512(KernelTable* t) {
  t->matmul_f32 = matmul<LoadF32>;
  t->matmul_bf16 = matmul<LoadBF16>;
  t->matmul_f16 = matmul<LoadF16>;
  t->dot = dot;
  t->axpy = axpy;
}

}  // namespace llmos

// AVX2 + FMA + F16C kernels. Same tiling as the AVX-512 file with 8 lanes; AVX2 has 16
// vector registers, so the tile is 4 weight rows x 2 tokens (8 accumulators).
#include <immintrin.h>

#include "kernels/kernels.h"

namespace llmos {
namespace {

// Full-width loads; the k % 8 tail is handled by scalar code after the vector loop.
struct LoadF32 {
  static __m256 load(const void* w, int64_t i) { return _mm256_loadu_ps(static_cast<const float*>(w) + i); }
  static float one(const void* w, int64_t i) { return static_cast<const float*>(w)[i]; }
};
struct LoadBF16 {
  static __m256 load(const void* w, int64_t i) {
    __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static float one(const void* w, int64_t i) {
    uint32_t u = uint32_t(static_cast<const uint16_t*>(w)[i]) << 16;
    float f;
    __builtin_memcpy(&f, &u, 4);
    return f;
  }
};
struct LoadF16 {
  static __m256 load(const void* w, int64_t i) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i)));
  }
  static float one(const void* w, int64_t i) { return _cvtsh_ss(static_cast<const uint16_t*>(w)[i]); }
};

float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <class L, int R, int T>
void tile(const float* x, int64_t k, const void* w, int64_t r0, float* y, int64_t ldy, int64_t t0,
          int64_t row_out0) {
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  const int64_t kv = k & ~int64_t(7);
  for (int64_t i = 0; i < kv; i += 8) {
    __m256 xv[T];
    for (int t = 0; t < T; ++t) xv[t] = _mm256_loadu_ps(x + (t0 + t) * k + i);
    for (int r = 0; r < R; ++r) {
      __m256 wv = L::load(w, (r0 + r) * k + i);
      for (int t = 0; t < T; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) {
      float s = hsum(acc[r][t]);
      for (int64_t i = kv; i < k; ++i) s += x[(t0 + t) * k + i] * L::one(w, (r0 + r) * k + i);
      y[(t0 + t) * ldy + row_out0 + r] = s;
    }
}

template <class L, int R>
void rows_block(const float* x, int64_t n, int64_t k, const void* w, int64_t r0, float* y,
                int64_t ldy, int64_t row_out0) {
  int64_t t = 0;
  for (; t + 2 <= n; t += 2) tile<L, R, 2>(x, k, w, r0, y, ldy, t, row_out0);
  if (t < n) tile<L, R, 1>(x, k, w, r0, y, ldy, t, row_out0);
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
  __m256 acc = _mm256_setzero_ps();
  const int64_t nv = n & ~int64_t(7);
  for (int64_t i = 0; i < nv; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  float s = hsum(acc);
  for (int64_t i = nv; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy(float* y, float a, const float* x, int64_t n) {
  const __m256 av = _mm256_set1_ps(a);
  const int64_t nv = n & ~int64_t(7);
  for (int64_t i = 0; i < nv; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (int64_t i = nv; i < n; ++i) y[i] += a * x[i];
}

}  // namespace

void fill_kernels_avx2(KernelTable* t) {
  t->matmul_f32 = matmul<LoadF32>;
  t->matmul_bf16 = matmul<LoadBF16>;
  t->matmul_f16 = matmul<LoadF16>;
  t->dot = dot;
  t->axpy = axpy;
}

}  // namespace llmos

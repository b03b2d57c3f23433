// AVX2 + FMA + F16C kernels. Same tiling as the AVX-512 file with 8 lanes; AVX2 has 16
// vector registers, so the tile is 4 weight rows x 2 tokens (8 accumulators).
#include <immintrin.h>

#include <cstdlib>

#include "kernels/kernels.h"
#include "kernels/transpose_avx2.h"

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

// ---- Packed GEMM for many tokens (prefill): the AVX-512 file's method with 16 rows per
// panel (two 8-lane halves) and up to 6 tokens, 12 accumulators of the 16 registers.
constexpr int kPanelRows = 16, kMaxTokens = 6;

// panel[kk * 16 + i] = W[r0 + i][kk] for i < nrows, 0 past nrows.
template <class L>
void pack_panel(const void* w, int64_t k, int64_t r0, int64_t nrows, float* panel) {
  const int64_t k8 = k & ~int64_t(7);
  for (int half = 0; half < 2; ++half) {
    for (int64_t kk = 0; kk < k8; kk += 8) {
      __m256 v[8];
      for (int i = 0; i < 8; ++i) {
        const int64_t r = half * 8 + i;
        v[i] = r < nrows ? L::load(w, (r0 + r) * k + kk) : _mm256_setzero_ps();
      }
      transpose8(v);
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(panel + (kk + j) * kPanelRows + half * 8, v[j]);
    }
    for (int64_t kk = k8; kk < k; ++kk)
      for (int i = 0; i < 8; ++i) {
        const int64_t r = half * 8 + i;
        panel[kk * kPanelRows + half * 8 + i] = r < nrows ? L::one(w, (r0 + r) * k + kk) : 0.f;
      }
  }
}

template <int T>
void micro(const float* x, int64_t k, const float* panel, float* y, int64_t ldy, int64_t nr) {
  __m256 acc[T][2];
  for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m256 w0 = _mm256_loadu_ps(panel + kk * kPanelRows), w1 = _mm256_loadu_ps(panel + kk * kPanelRows + 8);
    for (int t = 0; t < T; ++t) {
      const __m256 b = _mm256_broadcast_ss(x + t * k + kk);
      acc[t][0] = _mm256_fmadd_ps(w0, b, acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(w1, b, acc[t][1]);
    }
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(nr)), lane);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(nr - 8)), lane);
  for (int t = 0; t < T; ++t) {
    _mm256_maskstore_ps(y + t * ldy, m0, acc[t][0]);
    _mm256_maskstore_ps(y + t * ldy + 8, m1, acc[t][1]);
  }
}

template <class L>
void gemm(const float* x, int64_t n, int64_t k, const void* w, int64_t row0, int64_t row1, float* y, int64_t ldy) {
  float* panel = reinterpret_cast<float*>(thread_scratch(size_t(k * kPanelRows) * sizeof(float)));
  for (int64_t r = row0; r < row1; r += kPanelRows) {
    const int64_t nr = row1 - r < kPanelRows ? row1 - r : kPanelRows;
    pack_panel<L>(w, k, r, nr, panel);
    for (int64_t t = 0; t < n; t += kMaxTokens) {
      const int nt = int(n - t < kMaxTokens ? n - t : kMaxTokens);
      float* yt = y + t * ldy + (r - row0);
      switch (nt) {
        case 6: micro<6>(x + t * k, k, panel, yt, ldy, nr); break;
        case 5: micro<5>(x + t * k, k, panel, yt, ldy, nr); break;
        case 4: micro<4>(x + t * k, k, panel, yt, ldy, nr); break;
        case 3: micro<3>(x + t * k, k, panel, yt, ldy, nr); break;
        case 2: micro<2>(x + t * k, k, panel, yt, ldy, nr); break;
        default: micro<1>(x + t * k, k, panel, yt, ldy, nr); break;
      }
    }
  }
}

}  // namespace

void fill_kernels_avx2(KernelTable* t) {
  t->matmul_f32 = matmul<LoadF32>;
  t->matmul_bf16 = matmul<LoadBF16>;
  t->matmul_f16 = matmul<LoadF16>;
  t->gemm_f32 = gemm<LoadF32>;
  t->gemm_bf16 = gemm<LoadBF16>;
  t->gemm_f16 = gemm<LoadF16>;
  t->dot = dot;
  t->axpy = axpy;
}

}  // namespace llmos

// AVX-512 kernels (compiled with -mavx512f/bw/vl/dq/bf16). Weights of every float type
// are widened to float32 in registers and multiplied with FMA; a tile of up to 4 weight
// rows x 4 tokens keeps 16 accumulators in registers so each weight load feeds 4 FMAs.
#include <immintrin.h>

#include <cstdlib>

#include "kernels/kernels.h"
#include "kernels/transpose_avx512.h"

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

// ---- Packed GEMM for many tokens (prefill) ---------------------------------------------
// 32 weight rows are packed k-major (panel[kk][32], widened to float32: exact), then a
// micro-kernel keeps T <= 14 tokens x 32 rows in 28 accumulators: per k, two panel loads and
// T broadcasts of x feed 2T FMAs, and each token's 32 results are one contiguous store. No
// horizontal sums; every output is still one sequential sum over k.
constexpr int kPanelRows = 32, kMaxTokens = 14;

// panel[kk * 32 + i] = W[r0 + i][kk] for i < nrows, 0 for the lanes past nrows.
template <class L>
void pack_panel(const void* w, int64_t k, int64_t r0, int64_t nrows, float* panel) {
  for (int half = 0; half < 2; ++half)
    for (int64_t kk = 0; kk < k; kk += 16) {
      const __mmask16 m = (k - kk >= 16) ? __mmask16(0xffff) : __mmask16((1u << (k - kk)) - 1);
      __m512 v[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t r = half * 16 + i;
        v[i] = r < nrows ? L::load(w, (r0 + r) * k + kk, m) : _mm512_setzero_ps();
      }
      transpose16(v);  // v[j]: column kk + j of the 16 rows
      const int64_t nk = k - kk < 16 ? k - kk : 16;
      for (int64_t j = 0; j < nk; ++j) _mm512_store_ps(panel + (kk + j) * kPanelRows + half * 16, v[j]);
    }
}

template <int T, int H>
void micro(const float* x, int64_t k, const float* panel, float* y, int64_t ldy, __mmask16 m0, __mmask16 m1) {
  __m512 acc[T][H];
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h) acc[t][h] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const __m512 w0 = _mm512_load_ps(panel + kk * kPanelRows);
    const __m512 w1 = H == 2 ? _mm512_load_ps(panel + kk * kPanelRows + 16) : w0;
    for (int t = 0; t < T; ++t) {
      const __m512 b = _mm512_set1_ps(x[t * k + kk]);
      acc[t][0] = _mm512_fmadd_ps(w0, b, acc[t][0]);
      if (H == 2) acc[t][H - 1] = _mm512_fmadd_ps(w1, b, acc[t][H - 1]);
    }
  }
  for (int t = 0; t < T; ++t) {
    _mm512_mask_storeu_ps(y + t * ldy, m0, acc[t][0]);
    if (H == 2) _mm512_mask_storeu_ps(y + t * ldy + 16, m1, acc[t][H - 1]);
  }
}

template <int H>
void micro_any(int nt, const float* x, int64_t k, const float* panel, float* y, int64_t ldy, __mmask16 m0,
               __mmask16 m1) {
  switch (nt) {
#define LLMOS_MICRO(T) \
  case T: micro<T, H>(x, k, panel, y, ldy, m0, m1); break;
    LLMOS_MICRO(1) LLMOS_MICRO(2) LLMOS_MICRO(3) LLMOS_MICRO(4) LLMOS_MICRO(5) LLMOS_MICRO(6) LLMOS_MICRO(7)
    LLMOS_MICRO(8) LLMOS_MICRO(9) LLMOS_MICRO(10) LLMOS_MICRO(11) LLMOS_MICRO(12) LLMOS_MICRO(13) LLMOS_MICRO(14)
#undef LLMOS_MICRO
    default: break;
  }
}

template <class L>
void gemm(const float* x, int64_t n, int64_t k, const void* w, int64_t row0, int64_t row1, float* y, int64_t ldy) {
  float* panel = reinterpret_cast<float*>(thread_scratch(size_t(k * kPanelRows) * sizeof(float)));
  for (int64_t r = row0; r < row1; r += kPanelRows) {
    const int64_t nr = row1 - r < kPanelRows ? row1 - r : kPanelRows;
    pack_panel<L>(w, k, r, nr, panel);
    const __mmask16 m0 = nr >= 16 ? __mmask16(0xffff) : __mmask16((1u << nr) - 1);
    const __mmask16 m1 = nr >= 32 ? __mmask16(0xffff) : nr > 16 ? __mmask16((1u << (nr - 16)) - 1) : __mmask16(0);
    for (int64_t t = 0; t < n; t += kMaxTokens) {
      const int nt = int(n - t < kMaxTokens ? n - t : kMaxTokens);
      float* yt = y + t * ldy + (r - row0);
      if (nr > 16) micro_any<2>(nt, x + t * k, k, panel, yt, ldy, m0, m1);
      else micro_any<1>(nt, x + t * k, k, panel, yt, ldy, m0, m1);
    }
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
  t->gemm_f32 = gemm<LoadF32>;
  t->gemm_bf16 = gemm<LoadBF16>;
  t->gemm_f16 = gemm<LoadF16>;
  t->dot = dot;
  t->axpy = axpy;
}

}  // namespace llmos

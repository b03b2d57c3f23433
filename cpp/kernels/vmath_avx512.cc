// AVX-512 exp, and the activations and softmax built on it.
// exp(x) = 2^n * e^r with n = round(x / ln 2), |r| <= ln(2) / 2, e^r by its Taylor series to
// degree 7 (truncation error < 6e-9, under float32's half ulp), 2^n applied by vscalefps.
// SiLU and tanh-GELU are written as x * sigmoid(z): 0.5 * (1 + tanh(u)) == sigmoid(2u), which
// avoids tanh's cancellation near 0.
#include <immintrin.h>

#include "kernels/kernels.h"

namespace llmos {
namespace {

inline __m512 exp512(__m512 x) {
  // Below -104 the result is 0 (as libm's, after denormals run out); -inf gives exactly 0.
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_GT_OQ);
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-104.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // r = x - n ln2, with ln2 split in two so the product is exact enough
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, n));
}

// x * sigmoid(k * z(x)) for SiLU (z = x) and tanh-GELU (z = 2 * sqrt(2/pi) * (x + 0.044715 x^3)).
inline __m512 act512(int act, __m512 x) {
  __m512 z;
  if (act == 0) {
    z = x;
  } else {
    const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    z = _mm512_mul_ps(_mm512_set1_ps(2.0f * 0.79788456080286536f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
  }
  const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), z));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

inline bool vectorized(int act) { return act == 0 /* Silu */ || act == 2 /* GeluTanh */; }

void activate(int act, float* x, int64_t n, void (*fallback)(int, float*, int64_t)) {
  if (!vectorized(act)) { fallback(act, x, n); return; }
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = (n - i >= 16) ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(x + i, m, act512(act, _mm512_maskz_loadu_ps(m, x + i)));
  }
}

KernelTable scalar_table;  // the fallbacks, filled once

void activate_fast(int act, float* x, int64_t n) { activate(act, x, n, scalar_table.activate); }

void activate_gated_fast(int act, const float* gate, const float* up, float* out, int64_t n) {
  if (!vectorized(act)) { scalar_table.activate_gated(act, gate, up, out, n); return; }
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = (n - i >= 16) ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 g = act512(act, _mm512_maskz_loadu_ps(m, gate + i));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(g, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

void softmax_fast(float* x, int64_t n) {
  __m512 mv = _mm512_set1_ps(-__builtin_huge_valf());
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = (n - i >= 16) ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    mv = _mm512_mask_max_ps(mv, m, mv, _mm512_maskz_loadu_ps(m, x + i));
  }
  const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
  __m512 sv = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = (n - i >= 16) ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), mx));
    _mm512_mask_storeu_ps(x + i, m, e);
    sv = _mm512_add_ps(sv, _mm512_maskz_mov_ps(m, e));
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sv));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = (n - i >= 16) ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
  }
}

}  // namespace

void fill_vmath_avx512(KernelTable* t) {
  fill_kernels_scalar(&scalar_table);
  t->activate = activate_fast;
  t->activate_gated = activate_gated_fast;
  t->softmax = softmax_fast;
}

}  // namespace llmos

// AVX-512 activations and softmax, built on exp512 (exp_avx512.h).
// SiLU and tanh-GELU are written as x * sigmoid(z): 0.5 * (1 + tanh(u)) == sigmoid(2u), which
// avoids tanh's cancellation near 0.
#include <immintrin.h>

#include "kernels/exp_avx512.h"
#include "kernels/kernels.h"

namespace llmos {
namespace {

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

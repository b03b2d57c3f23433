// AVX2 exp, and the activations and softmax built on it (the AVX-512 file's method with
// 8 lanes). 2^n is built in the exponent bits, so results below 2^-126 flush to 0 (libm
// would give a denormal under 1.2e-38).
#include <immintrin.h>

#include "kernels/kernels.h"

namespace llmos {
namespace {

inline __m256 exp256(__m256 x) {
  const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.33654475f), _CMP_GT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-87.33654475f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // n in [-126, 128]: split 2^n = 2^(n/2) * 2^(n - n/2) so both factors are normal floats.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i h = _mm256_srai_epi32(ni, 1);
  const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23));
  const __m256 s2 =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), _mm256_set1_epi32(127)), 23));
  return _mm256_and_ps(_mm256_mul_ps(_mm256_mul_ps(p, s1), s2), live);
}

inline __m256 act256(int act, __m256 x) {
  __m256 z;
  if (act == 0) {
    z = x;
  } else {
    const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    z = _mm256_mul_ps(_mm256_set1_ps(2.0f * 0.79788456080286536f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
  }
  const __m256 e = exp256(_mm256_sub_ps(_mm256_setzero_ps(), z));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

inline bool vectorized(int act) { return act == 0 /* Silu */ || act == 2 /* GeluTanh */; }

KernelTable scalar_table;  // the fallbacks, filled once

void activate_fast(int act, float* x, int64_t n) {
  if (!vectorized(act)) { scalar_table.activate(act, x, n); return; }
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, act256(act, _mm256_loadu_ps(x + i)));
  if (i < n) scalar_table.activate(act, x + i, n - i);
}

void activate_gated_fast(int act, const float* gate, const float* up, float* out, int64_t n) {
  if (!vectorized(act)) { scalar_table.activate_gated(act, gate, up, out, n); return; }
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(act256(act, _mm256_loadu_ps(gate + i)), _mm256_loadu_ps(up + i)));
  if (i < n) scalar_table.activate_gated(act, gate + i, up + i, out + i, n - i);
}

void softmax_fast(float* x, int64_t n) {
  float mx = -__builtin_huge_valf();
  for (int64_t i = 0; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  const __m256 mv = _mm256_set1_ps(mx);
  float s = 0.f;
  int64_t i = 0;
  __m256 sv = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
    _mm256_storeu_ps(x + i, e);
    sv = _mm256_add_ps(sv, e);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sv);
  for (float l : lanes) s += l;
  for (; i < n; ++i) {
    x[i] = x[i] == -__builtin_huge_valf() ? 0.f : __builtin_expf(x[i] - mx);
    s += x[i];
  }
  const float inv = 1.0f / s;
  for (int64_t j = 0; j < n; ++j) x[j] *= inv;
}

}  // namespace

void fill_vmath_avx2(KernelTable* t) {
  fill_kernels_scalar(&scalar_table);
  t->activate = activate_fast;
  t->activate_gated = activate_gated_fast;
  t->softmax = softmax_fast;
}

}  // namespace llmos

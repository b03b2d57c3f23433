// AVX2 activations and softmax, built on exp256 (exp_avx2.h).
#include <immintrin.h>

#include "kernels/exp_avx2.h"
#include "kernels/kernels.h"

namespace llmos {
namespace {

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

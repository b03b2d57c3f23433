// AVX2 attention (kernels.h AttnBlock): attention_avx512.cc's method with 8 queries in the
// lanes; a block of up to 16 queries runs as two halves of 8. Scores are broadcast FMAs of
// K against the transposed queries, the softmax runs per lane, and P V accumulates 8 dims
// of V per pass, transposed 8 x 8 at the end.
#include <immintrin.h>

#include <cstdint>

#include "kernels/exp_avx2.h"
#include "kernels/kernels.h"
#include "kernels/transpose_avx2.h"

namespace llmos {
namespace {

constexpr int kKeys = 8;

inline __m256 tanh256(__m256 x) {
  const __m256 e = exp256(_mm256_add_ps(x, x));
  return _mm256_sub_ps(_mm256_set1_ps(1.0f), _mm256_div_ps(_mm256_set1_ps(2.0f), _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
}

// Up to 8 queries (a.nq <= 8).
void attend8(const AttnBlock& a, float* scratch) {
  const int64_t nq = a.nq, len = a.len, D = a.D;
  float* qt = scratch;     // [D][8]
  float* s = qt + 8 * D;   // [len][8]
  for (int64_t d = 0; d < D; ++d)
    for (int i = 0; i < 8; ++i) qt[8 * d + i] = i < nq ? a.q[i * a.ldq + d] : 0.f;
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(nq)), lane);
  const __m256i pos = _mm256_add_epi32(_mm256_set1_epi32(int32_t(a.p0)), lane);
  const __m256i lo = a.window > 0 ? _mm256_sub_epi32(pos, _mm256_set1_epi32(int32_t(a.window - 1)))
                                  : _mm256_set1_epi32(INT32_MIN);
  const __m256 scale = _mm256_set1_ps(a.scale);
  const __m256 neg_inf = _mm256_set1_ps(-__builtin_huge_valf());
  __m256 mx = neg_inf;
  auto finish = [&](int64_t j, __m256 acc) {
    __m256 v = _mm256_mul_ps(acc, scale);
    if (a.softcap > 0) {
      const __m256 c = _mm256_set1_ps(a.softcap);
      v = _mm256_mul_ps(tanh256(_mm256_div_ps(v, c)), c);
    }
    const __m256i kv = _mm256_set1_epi32(int32_t(a.start + j));
    const __m256i hidden = _mm256_or_si256(_mm256_cmpgt_epi32(kv, pos), _mm256_cmpgt_epi32(lo, kv));
    v = _mm256_blendv_ps(v, neg_inf, _mm256_castsi256_ps(hidden));
    v = _mm256_and_ps(v, _mm256_castsi256_ps(valid));  // lanes past nq: 0, never NaN
    mx = _mm256_max_ps(mx, v);
    _mm256_storeu_ps(s + 8 * j, v);
  };
  int64_t j = 0;
  for (; j + kKeys <= len; j += kKeys) {
    __m256 acc[kKeys];
    for (int u = 0; u < kKeys; ++u) acc[u] = _mm256_setzero_ps();
    const float* kr = a.k + j * D;
    for (int64_t d = 0; d < D; ++d) {
      const __m256 qv = _mm256_loadu_ps(qt + 8 * d);
      for (int u = 0; u < kKeys; ++u) acc[u] = _mm256_fmadd_ps(_mm256_broadcast_ss(kr + u * D + d), qv, acc[u]);
    }
    for (int u = 0; u < kKeys; ++u) finish(j + u, acc[u]);
  }
  for (; j < len; ++j) {
    __m256 acc = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d)
      acc = _mm256_fmadd_ps(_mm256_broadcast_ss(a.k + j * D + d), _mm256_loadu_ps(qt + 8 * d), acc);
    finish(j, acc);
  }

  __m256 sum = _mm256_setzero_ps();
  for (j = 0; j < len; ++j) {
    const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + 8 * j), mx));
    sum = _mm256_add_ps(sum, e);
    _mm256_storeu_ps(s + 8 * j, e);
  }
  const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), sum);

  for (int64_t d0 = 0; d0 < D; d0 += 8) {
    const int64_t nd = D - d0 < 8 ? D - d0 : 8;
    __m256 acc[8];
    for (int u = 0; u < 8; ++u) acc[u] = _mm256_setzero_ps();
    for (j = 0; j < len; ++j) {
      const __m256 p = _mm256_loadu_ps(s + 8 * j);
      const float* vr = a.v + j * D + d0;
      if (nd == 8) {
        for (int u = 0; u < 8; ++u) acc[u] = _mm256_fmadd_ps(_mm256_broadcast_ss(vr + u), p, acc[u]);
      } else {
        for (int u = 0; u < nd; ++u) acc[u] = _mm256_fmadd_ps(_mm256_broadcast_ss(vr + u), p, acc[u]);
      }
    }
    for (int u = 0; u < 8; ++u) acc[u] = _mm256_mul_ps(acc[u], inv);
    transpose8(acc);  // acc[i]: query i's dims d0..d0+7
    alignas(32) float row[8];
    for (int64_t i = 0; i < nq; ++i) {
      if (nd == 8) {
        _mm256_storeu_ps(a.out + i * a.ldo + d0, acc[i]);
      } else {
        _mm256_store_ps(row, acc[i]);
        for (int64_t u = 0; u < nd; ++u) a.out[i * a.ldo + d0 + u] = row[u];
      }
    }
  }
}

void attend(const AttnBlock& a, float* scratch) {
  AttnBlock half = a;
  half.nq = a.nq < 8 ? a.nq : 8;
  attend8(half, scratch);
  if (a.nq > 8) {
    half.nq = a.nq - 8;
    half.q = a.q + 8 * a.ldq;
    half.p0 = a.p0 + 8;
    half.out = a.out + 8 * a.ldo;
    attend8(half, scratch);
  }
}

}  // namespace

void fill_attention_avx2(KernelTable* t) { t->attend = attend; }

}  // namespace llmos

// AVX-512 attention for a block of up to 16 queries of one head (kernels.h AttnBlock), with
// the queries in the 16 vector lanes throughout:
//   scores: for each key j, s[j] = sum_d K[j][d] * Qt[d] (Qt: the queries transposed, one
//           vector per d), 8 keys at a time, each K element broadcast from memory;
//   softmax per lane over j (max, exp512, sum) in the same layout: no transposes;
//   out:    for each 16 dims of V, acc[d] += V[j][d] * p[j] over j, then one 16 x 16
//           transpose to write each query's row.
// Every step is a broadcast FMA, so the kernel runs at FMA speed with no horizontal sums,
// no copy of V, and no per-element masking loop.
#include <immintrin.h>

#include "kernels/exp_avx512.h"
#include "kernels/kernels.h"
#include "kernels/transpose_avx512.h"

namespace llmos {
namespace {

constexpr int kKeys = 8;  // keys per score step: 8 independent FMA chains

// tanh(x) = 1 - 2 / (exp(2x) + 1), exact at 0 and saturating at +-1.
inline __m512 tanh512(__m512 x) {
  const __m512 e = exp512(_mm512_add_ps(x, x));
  return _mm512_sub_ps(_mm512_set1_ps(1.0f), _mm512_div_ps(_mm512_set1_ps(2.0f), _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
}

// Lanes (queries) that see the key at position `key`.
inline __mmask16 visible(int64_t key, __m512i pos, __m512i lo, __mmask16 valid) {
  const __m512i kv = _mm512_set1_epi32(int32_t(key));
  return valid & _mm512_cmp_epi32_mask(kv, pos, _MM_CMPINT_LE) & _mm512_cmp_epi32_mask(kv, lo, _MM_CMPINT_NLT);
}

void attend(const AttnBlock& a, float* scratch) {
  const int64_t nq = a.nq, len = a.len, D = a.D;
  float* qt = scratch;       // [D][16]
  float* s = qt + 16 * D;    // [len][16] scores, then probabilities
  const __mmask16 valid = nq >= 16 ? __mmask16(0xffff) : __mmask16((1u << nq) - 1);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i qrow = _mm512_mullo_epi32(lane, _mm512_set1_epi32(int32_t(a.ldq)));
  for (int64_t d = 0; d < D; ++d)
    _mm512_storeu_ps(qt + 16 * d, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, qrow, a.q + d, 4));

  // Positions as int32 lanes: the sequence positions of one call fit (max_positions < 2^31).
  const __m512i pos = _mm512_add_epi32(_mm512_set1_epi32(int32_t(a.p0)), lane);
  const __m512i lo = a.window > 0 ? _mm512_sub_epi32(pos, _mm512_set1_epi32(int32_t(a.window - 1)))
                                  : _mm512_set1_epi32(INT32_MIN);
  const __m512 scale = _mm512_set1_ps(a.scale);
  const __m512 neg_inf = _mm512_set1_ps(-__builtin_huge_valf());
  __m512 mx = neg_inf;
  auto finish = [&](int64_t j, __m512 acc) {
    __m512 v = _mm512_mul_ps(acc, scale);
    if (a.softcap > 0) {
      const __m512 c = _mm512_set1_ps(a.softcap);
      v = _mm512_mul_ps(tanh512(_mm512_div_ps(v, c)), c);
    }
    // Masked keys are -inf (probability exactly 0); lanes past nq get 0 so nothing is NaN.
    v = _mm512_mask_blend_ps(visible(a.start + j, pos, lo, valid), neg_inf, v);
    v = _mm512_mask_mov_ps(v, __mmask16(~valid), _mm512_setzero_ps());
    mx = _mm512_max_ps(mx, v);
    _mm512_storeu_ps(s + 16 * j, v);
  };
  int64_t j = 0;
  for (; j + kKeys <= len; j += kKeys) {
    __m512 acc[kKeys];
    for (int u = 0; u < kKeys; ++u) acc[u] = _mm512_setzero_ps();
    const float* kr = a.k + j * D;
    for (int64_t d = 0; d < D; ++d) {
      const __m512 qv = _mm512_loadu_ps(qt + 16 * d);
      for (int u = 0; u < kKeys; ++u) acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(kr[u * D + d]), qv, acc[u]);
    }
    for (int u = 0; u < kKeys; ++u) finish(j + u, acc[u]);
  }
  for (; j < len; ++j) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) acc = _mm512_fmadd_ps(_mm512_set1_ps(a.k[j * D + d]), _mm512_loadu_ps(qt + 16 * d), acc);
    finish(j, acc);
  }

  __m512 sum = _mm512_setzero_ps();
  for (j = 0; j < len; ++j) {
    const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + 16 * j), mx));
    sum = _mm512_add_ps(sum, e);
    _mm512_storeu_ps(s + 16 * j, e);
  }
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), sum);

  for (int64_t d0 = 0; d0 < D; d0 += 16) {
    const int64_t nd = D - d0 < 16 ? D - d0 : 16;
    __m512 acc[16];
    for (int u = 0; u < 16; ++u) acc[u] = _mm512_setzero_ps();
    if (nd == 16) {
      for (j = 0; j < len; ++j) {
        const __m512 p = _mm512_loadu_ps(s + 16 * j);
        const float* vr = a.v + j * D + d0;
        for (int u = 0; u < 16; ++u) acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(vr[u]), p, acc[u]);
      }
    } else {
      for (j = 0; j < len; ++j) {
        const __m512 p = _mm512_loadu_ps(s + 16 * j);
        const float* vr = a.v + j * D + d0;
        for (int u = 0; u < nd; ++u) acc[u] = _mm512_fmadd_ps(_mm512_set1_ps(vr[u]), p, acc[u]);
      }
    }
    for (int u = 0; u < 16; ++u) acc[u] = _mm512_mul_ps(acc[u], inv);
    transpose16(acc);  // acc[i]: query i's dims d0..d0+15
    const __mmask16 dm = nd >= 16 ? __mmask16(0xffff) : __mmask16((1u << nd) - 1);
    for (int64_t i = 0; i < nq; ++i) _mm512_mask_storeu_ps(a.out + i * a.ldo + d0, dm, acc[i]);
  }
}

}  // namespace

void fill_attention_avx512(KernelTable* t) { t->attend = attend; }

}  // namespace llmos

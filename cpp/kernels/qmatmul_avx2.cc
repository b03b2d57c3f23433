// AVX2 kernel for block-quantized weights (quant/qformat.h), for CPUs without VNNI.
// vpmaddubsw multiplies unsigned codes by signed activations into int16 pairs; 4- and 6-bit
// codes (<= 63: 2 * 63 * 127 < 32767) cannot overflow. 8-bit codes could (255 * 127 * 2 >
// 32767), so Q8 first turns codes back to signed weights and uses the sign trick:
// |w| x (x * sign(w)).
#include <immintrin.h>

#include "kernels/kernels.h"

namespace llmos {
namespace simd::avx2 {
namespace {

inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// One 32-value block of weights, decoded once and reused by every token of a group. Q8 keeps
// |w| and w's signs (the sign trick); the other formats' codes are already unsigned.
struct WBlock {
  __m256i u, sign;
};

template <QuantType Q>
inline WBlock prepare(__m256i w) {
  if (Q == QuantType::Q8) {
    const __m256i ws = _mm256_xor_si256(w, _mm256_set1_epi8(char(0x80)));  // u - 128
    return {_mm256_sign_epi8(ws, ws), ws};
  }
  return {w, w};
}

// int32 dot products of one 32-value block: 8 lanes.
template <QuantType Q>
inline __m256i block_dot(const WBlock& w, __m256i x) {
  const __m256i ones = _mm256_set1_epi16(1);
  if (Q == QuantType::Q8) return _mm256_madd_epi16(_mm256_maddubs_epi16(w.u, _mm256_sign_epi8(x, w.sign)), ones);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w.u, x), ones);
}

constexpr int64_t kPrefetchBytes = 8192;

// R rows for T tokens (t0..t0+T-1). Each chunk of weights is loaded and decoded once for the
// T tokens, which is what makes a batch of decode tokens cheaper than one token at a time.
// A token's accumulator gets the same FMAs in the same order whatever R, T and the other
// tokens are, so its result is bitwise that of the token alone (the serving engine relies on it).
template <QuantType Q, int R, int T>
void rows(const ActView& x, const float* sdg, const QView& w, int64_t r0, int64_t t0, float* y, int64_t ldy,
          int64_t row_out0) {
  const int64_t k = w.cols, ng = k / w.group, nb = k / kActBlock;
  const int64_t row_bytes = quant_row_bytes(Q, k);
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i hmask = _mm256_set1_epi8(0x30);  // Q6: the high bits' place in a code
  const __m256i shl = _mm256_setr_epi32(4, 4, 4, 4, 2, 2, 2, 2), shr = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
  // Software prefetch ahead in each row's stream (see qmatmul_avx512.cc).
  constexpr int64_t kChunkBytes = Q == QuantType::Q8 ? 64 : Q == QuantType::Q6 ? kQ6ChunkBytes : 32;
  const bool prefetch = (r0 + R) * row_bytes + kPrefetchBytes <= w.rows * row_bytes;
  const int8_t* xq = x.q + t0 * k;
  const float* xd = x.d + t0 * nb;
  __m256 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; b += 2) {  // two activation blocks = one 64-value chunk
    const int64_t ga = (b * 32) / w.group, gb = (b * 32 + 32) / w.group;
    for (int r = 0; r < R; ++r) {
      const uint8_t* codes = w.codes + (r0 + r) * row_bytes;
      if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(codes + (b / 2) * kChunkBytes + kPrefetchBytes), _MM_HINT_T0);
      __m256i wa, wb;
      if (Q == QuantType::Q8) {
        wa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + b * 32));
        wb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + b * 32 + 32));
      } else if (Q == QuantType::Q6) {
        // Nibbles as Q4, then the high bits: the 16 bytes in both 128-bit lanes, shifted
        // per lane so that bits 2q..2q+1 of each byte (quarter q of the chunk) reach bits 4-5.
        const uint8_t* p = codes + (b / 2) * kQ6ChunkBytes;
        const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
        const __m256i high = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 32)));
        wa = _mm256_or_si256(_mm256_and_si256(packed, mask), _mm256_and_si256(_mm256_sllv_epi32(high, shl), hmask));
        wb = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(packed, 4), mask),
                             _mm256_and_si256(_mm256_srlv_epi32(high, shr), hmask));
      } else {
        const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + b * 16));
        wa = _mm256_and_si256(packed, mask);
        wb = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
      }
      const WBlock pa = prepare<Q>(wa), pb = prepare<Q>(wb);
      const uint16_t* sc = w.scale + (r0 + r) * ng;
      const float sa = h2f(sc[ga]), sb = h2f(sc[gb]);
      for (int t = 0; t < T; ++t) {
        const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * k + b * 32));
        const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + t * k + b * 32 + 32));
        const float da = xd[t * nb + b], db = xd[t * nb + b + 1];
        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot<Q>(pa, xa)), _mm256_set1_ps(sa * da), acc[r][t]);
        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot<Q>(pb, xb)), _mm256_set1_ps(sb * db), acc[r][t]);
      }
    }
  }
  // The zero-point terms: each token's own sequential sum over groups, as the token alone
  // would do it, with the T tokens' sums interleaved so that they overlap.
  for (int r = 0; r < R; ++r) {
    float s[T], m[T];
    for (int t = 0; t < T; ++t) s[t] = hsum(acc[r][t]), m[t] = 0.f;
    if (Q == QuantType::Q4Asym) {
      const uint16_t* mn = w.min + (r0 + r) * ng;
      for (int64_t g = 0; g < ng; ++g) {
        const float h = h2f(mn[g]);
        for (int t = 0; t < T; ++t) s[t] += h * sdg[(t0 + t) * ng + g];
      }
    } else if (Q == QuantType::Q4 || Q == QuantType::Q6) {
      const uint16_t* sc = w.scale + (r0 + r) * ng;
      for (int64_t g = 0; g < ng; ++g) {
        const float h = h2f(sc[g]);
        for (int t = 0; t < T; ++t) m[t] += h * sdg[(t0 + t) * ng + g];
      }
      for (int t = 0; t < T; ++t) s[t] -= (Q == QuantType::Q6 ? 32.0f : 8.0f) * m[t];
    }  // Q8 multiplied signed weights: no zero-point term
    for (int t = 0; t < T; ++t) y[(t0 + t) * ldy + row_out0 + r] = s[t];
  }
}

// 4 rows x 4 tokens: 16 accumulators, spilling a few of them, measured faster on Zen than
// 4 x 2 or 2 x 4 (a [n, 576] x [1536, 576] product at 1 thread, n = 8 and 32).
constexpr int kRows = 4, kTokens = 4;

// R rows for every token: groups of kTokens, then of 2, then one (the tail's speed matters
// little; any grouping gives each token the same result).
template <QuantType Q, int R>
void rows_all_tokens(const ActView& x, const float* sdg, const QView& w, int64_t r0, float* y, int64_t ldy,
                     int64_t row_out0) {
  int64_t t = 0;
  for (; t + kTokens <= x.n; t += kTokens) rows<Q, R, kTokens>(x, sdg, w, r0, t, y, ldy, row_out0);
  for (; t + 2 <= x.n; t += 2) rows<Q, R, 2>(x, sdg, w, r0, t, y, ldy, row_out0);
  for (; t < x.n; ++t) rows<Q, R, 1>(x, sdg, w, r0, t, y, ldy, row_out0);
}

template <QuantType Q>
void qmatmul_q(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y,
               int64_t ldy) {
  int64_t r = row0;
  for (; r + kRows <= row1; r += kRows) rows_all_tokens<Q, kRows>(x, sdg, w, r, y, ldy, r - row0);
  for (; r < row1; ++r) rows_all_tokens<Q, 1>(x, sdg, w, r, y, ldy, r - row0);
}

void qmatmul(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y,
             int64_t ldy) {
  switch (w.type) {
    case QuantType::Q8: qmatmul_q<QuantType::Q8>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q4: qmatmul_q<QuantType::Q4>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q4Asym: qmatmul_q<QuantType::Q4Asym>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q6: qmatmul_q<QuantType::Q6>(x, sdg, w, row0, row1, y, ldy); break;
    default: break;
  }
}

#include "kernels/qcodes_avx2.inc"

// quantize_activations (qformat.cc) 32 values at a time, with the same float operations
// (amax / max_code, x * (1 / s), round to nearest even) so the codes are identical.
void quantize_acts(const float* x, int64_t n, int64_t k, int8_t* q, float* d, float* sd, int32_t* qsum,
                   int max_code) {
  const int64_t nb = k / kActBlock;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* v = x + t * k + b * kActBlock;
      __m256 u[4], m = _mm256_setzero_ps();
      for (int i = 0; i < 4; ++i) {
        u[i] = _mm256_loadu_ps(v + 8 * i);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, u[i]));
      }
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
      const float s = _mm_cvtss_f32(m4) / float(max_code);
      const __m256 inv = _mm256_set1_ps(s != 0.f ? 1.0f / s : 0.f);
      __m256i c[4], sum = _mm256_setzero_si256();
      for (int i = 0; i < 4; ++i) {
        c[i] = _mm256_cvtps_epi32(_mm256_mul_ps(u[i], inv));
        sum = _mm256_add_epi32(sum, c[i]);
      }
      // int32 -> int8 (values within +-127): two saturating packs, then undo their lane interleave
      const __m256i w16 = _mm256_packs_epi32(c[0], c[1]), x16 = _mm256_packs_epi32(c[2], c[3]);
      const __m256i b8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w16, x16), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + t * k + b * kActBlock), b8);
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
      const int32_t total = _mm_cvtsi128_si32(s4);
      d[t * nb + b] = s;
      sd[t * nb + b] = s * float(total);
      qsum[t * nb + b] = total;
    }
}

}  // namespace
}  // namespace simd::avx2

void fill_qkernels_avx2(KernelTable* t) {
  t->qmatmul = simd::avx2::qmatmul;
  t->qmatmul_name = "avx2 (vpmaddubsw)";
  t->quantize_acts = simd::avx2::quantize_acts;
}

}  // namespace llmos

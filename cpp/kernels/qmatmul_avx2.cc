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

// int32 dot products of one 32-value block: 8 lanes.
template <QuantType Q>
inline __m256i block_dot(__m256i w, __m256i x) {
  const __m256i ones = _mm256_set1_epi16(1);
  if (Q == QuantType::Q8) {
    const __m256i ws = _mm256_xor_si256(w, _mm256_set1_epi8(char(0x80)));  // u - 128
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(ws, ws), _mm256_sign_epi8(x, ws));
    return _mm256_madd_epi16(p, ones);
  }
  return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), ones);
}

constexpr int64_t kPrefetchBytes = 8192;

template <QuantType Q, int R>
void rows(const ActView& x, const float* sdg, const QView& w, int64_t r0, float* y, int64_t ldy, int64_t row_out0) {
  const int64_t k = w.cols, ng = k / w.group, nb = k / kActBlock;
  const int64_t row_bytes = quant_row_bytes(Q, k);
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i hmask = _mm256_set1_epi8(0x30);  // Q6: the high bits' place in a code
  const __m256i shl = _mm256_setr_epi32(4, 4, 4, 4, 2, 2, 2, 2), shr = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
  // Software prefetch ahead in each row's stream (see qmatmul_avx512.cc).
  constexpr int64_t kChunkBytes = Q == QuantType::Q8 ? 64 : Q == QuantType::Q6 ? kQ6ChunkBytes : 32;
  const bool prefetch = (r0 + R) * row_bytes + kPrefetchBytes <= w.rows * row_bytes;
  for (int64_t t = 0; t < x.n; ++t) {
    __m256 acc[R];
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b += 2) {  // two activation blocks = one 64-value chunk
      const __m256i xa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + t * k + b * 32));
      const __m256i xb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + t * k + b * 32 + 32));
      const float da = x.d[t * nb + b], db = x.d[t * nb + b + 1];
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
          wa = _mm256_or_si256(_mm256_and_si256(packed, mask),
                               _mm256_and_si256(_mm256_sllv_epi32(high, shl), hmask));
          wb = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(packed, 4), mask),
                               _mm256_and_si256(_mm256_srlv_epi32(high, shr), hmask));
        } else {
          const __m256i packed = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + b * 16));
          wa = _mm256_and_si256(packed, mask);
          wb = _mm256_and_si256(_mm256_srli_epi16(packed, 4), mask);
        }
        const uint16_t* sc = w.scale + (r0 + r) * ng;
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot<Q>(wa, xa)), _mm256_set1_ps(h2f(sc[ga]) * da), acc[r]);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(block_dot<Q>(wb, xb)), _mm256_set1_ps(h2f(sc[gb]) * db), acc[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      float s = hsum(acc[r]);
      if (Q == QuantType::Q4Asym) {
        const uint16_t* mn = w.min + (r0 + r) * ng;
        for (int64_t g = 0; g < ng; ++g) s += h2f(mn[g]) * sdg[t * ng + g];
      } else if (Q == QuantType::Q4 || Q == QuantType::Q6) {
        const uint16_t* sc = w.scale + (r0 + r) * ng;
        float m = 0.f;
        for (int64_t g = 0; g < ng; ++g) m += h2f(sc[g]) * sdg[t * ng + g];
        s -= (Q == QuantType::Q6 ? 32.0f : 8.0f) * m;
      }  // Q8 multiplied signed weights: no zero-point term
      y[t * ldy + row_out0 + r] = s;
    }
  }
}

template <QuantType Q>
void qmatmul_q(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y,
               int64_t ldy) {
  int64_t r = row0;
  for (; r + 4 <= row1; r += 4) rows<Q, 4>(x, sdg, w, r, y, ldy, r - row0);
  for (; r < row1; ++r) rows<Q, 1>(x, sdg, w, r, y, ldy, r - row0);
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

}  // namespace
}  // namespace simd::avx2

void fill_qkernels_avx2(KernelTable* t) { t->qmatmul = simd::avx2::qmatmul; }

}  // namespace llmos

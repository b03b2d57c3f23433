// AVX-512 VNNI kernel for block-quantized weights (quant/qformat.h). One step covers 64
// input values: vpdpbusd multiplies 64 unsigned weight codes by 64 signed activation codes
// into 16 int32 lanes (lanes 0-7: the first activation block, 8-15: the second), which are
// scaled per block and accumulated in float. A tile of R rows x T tokens shares each load.
#include <immintrin.h>

#include "kernels/kernels.h"

namespace llmos {
namespace simd::avx512vnni {
namespace {

#include "kernels/qcodes_avx512.inc"

// sum over groups of m_w(g) * sdg(g) for one row and one token.
template <QuantType Q>
inline float min_term(const QView& w, int64_t r, const float* sdg_t) {
  const int64_t ng = w.cols / w.group;
  const uint16_t* src = Q == QuantType::Q4Asym ? w.min + r * ng : w.scale + r * ng;
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < ng; g += 16) {
    const __mmask16 m = (ng - g >= 16) ? __mmask16(0xffff) : __mmask16((1u << (ng - g)) - 1);
    const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, src + g));
    acc = _mm512_fmadd_ps(v, _mm512_maskz_loadu_ps(m, sdg_t + g), acc);
  }
  const float s = _mm512_reduce_add_ps(acc);
  return Q == QuantType::Q4Asym ? s : -float(Q == QuantType::Q8 ? 128 : Q == QuantType::Q6 ? 32 : 8) * s;
}

// Scales are gathered 8 chunks (512 values) at a time: one load of up to 16 float16 weight
// scales and one of 16 activation scales per row / token, then a vpermps per chunk spreads
// the chunk's two block scales over the two halves of a vector.
struct ScaleIndex {
  __m512i w[8];  // chunk j: lanes -> index of the weight group among the 16 loaded
  __m512i x[8];  // chunk j: lanes -> index of the activation block among the 16 loaded
  explicit ScaleIndex(int64_t group) {
    for (int j = 0; j < 8; ++j) {
      const int wa = int((j * 64) / group), wb = int((j * 64 + 32) / group);
      w[j] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(wa)), _mm256_set1_epi32(wb), 1);
      x[j] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set1_epi32(2 * j)), _mm256_set1_epi32(2 * j + 1), 1);
    }
  }
};

constexpr int64_t kPrefetchBytes = 8192;

inline __mmask16 first_n(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

template <QuantType Q, int R, int T>
void tile(const ActView& x, const float* sdg, const QView& w, const ScaleIndex& ix, int64_t r0, int64_t t0, float* y,
          int64_t ldy, int64_t row_out0) {
  const int64_t k = w.cols, ng = k / w.group, nb = k / kActBlock, n_chunks = k / 64;
  const int64_t row_bytes = quant_row_bytes(Q, k);
  constexpr int32_t kZp = Q == QuantType::Q8 ? 128 : Q == QuantType::Q4 ? 8 : Q == QuantType::Q6 ? 32 : 0;
  __m512 acc[R][T];
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t) acc[r][t] = _mm512_setzero_ps();
  const __m512i zero = _mm512_setzero_si512();
  // Software prefetch kPrefetchBytes ahead in each row's stream: one core's demand loads
  // alone keep too few misses in flight, and decode ran well under the read bandwidth (on
  // 2 cores: the 151936 x 896 Q6 head 8.0 -> 4.0 ms, Qwen2.5-0.5B-shaped int4 decode
  // 38 -> 54 tok/s).
  constexpr int64_t kChunkBytes = Q == QuantType::Q8 ? 64 : Q == QuantType::Q6 ? kQ6ChunkBytes : 32;
  const bool prefetch = (r0 + R) * row_bytes + kPrefetchBytes <= w.rows * row_bytes;
  const uint8_t* pf = w.codes + r0 * row_bytes + kPrefetchBytes;
  for (int64_t c0 = 0; c0 < n_chunks; c0 += 8) {
    const int64_t g0 = (c0 * 64) / w.group;
    __m512 sw16[R], sx16[T];
    for (int r = 0; r < R; ++r)
      sw16[r] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first_n(ng - g0), w.scale + (r0 + r) * ng + g0));
    for (int t = 0; t < T; ++t) sx16[t] = _mm512_maskz_loadu_ps(first_n(nb - 2 * c0), x.d + (t0 + t) * nb + 2 * c0);
    const int64_t c1 = c0 + 8 < n_chunks ? c0 + 8 : n_chunks;
    for (int64_t c = c0; c < c1; ++c) {
      const int j = int(c - c0);
      __m512i wv[R];
      __m512 sw[R];
      for (int r = 0; r < R; ++r) {
        if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(pf + r * row_bytes + c * kChunkBytes), _MM_HINT_T0);
        wv[r] = load_codes<Q>(w.codes + (r0 + r) * row_bytes, c);
        sw[r] = _mm512_permutexvar_ps(ix.w[j], sw16[r]);
      }
      for (int t = 0; t < T; ++t) {
        const __m512i xv = _mm512_loadu_si512(x.q + (t0 + t) * k + c * 64);
        const __m512 sx = _mm512_permutexvar_ps(ix.x[j], sx16[t]);
        // Symmetric codes carry a zero point: dot(u, q) - zp * sum(q) per block, exact in
        // int32. The correction starts the accumulator (lane 0 of each block's half).
        __m512i start = zero;
        if (Q != QuantType::Q4Asym) {
          const int32_t* qs = x.qsum + (t0 + t) * nb + 2 * c;
          start = _mm512_mask_set1_epi32(_mm512_maskz_set1_epi32(0x0001, -kZp * qs[0]), 0x0100, -kZp * qs[1]);
        }
        for (int r = 0; r < R; ++r) {
          const __m512 dots = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(start, wv[r], xv));
          acc[r][t] = _mm512_fmadd_ps(dots, _mm512_mul_ps(sw[r], sx), acc[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < T; ++t)
      y[(t0 + t) * ldy + row_out0 + r] =
          _mm512_reduce_add_ps(acc[r][t]) + (Q == QuantType::Q4Asym ? min_term<Q>(w, r0 + r, sdg + (t0 + t) * ng) : 0.f);
}

template <QuantType Q, int R>
void rows_block(const ActView& x, const float* sdg, const QView& w, const ScaleIndex& ix, int64_t r0, float* y,
                int64_t ldy, int64_t row_out0) {
  int64_t t = 0;
  for (; t + 4 <= x.n; t += 4) tile<Q, R, 4>(x, sdg, w, ix, r0, t, y, ldy, row_out0);
  switch (x.n - t) {
    case 3: tile<Q, R, 3>(x, sdg, w, ix, r0, t, y, ldy, row_out0); break;
    case 2: tile<Q, R, 2>(x, sdg, w, ix, r0, t, y, ldy, row_out0); break;
    case 1: tile<Q, R, 1>(x, sdg, w, ix, r0, t, y, ldy, row_out0); break;
    default: break;
  }
}

template <QuantType Q>
void qmatmul_q(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y,
               int64_t ldy) {
  const ScaleIndex ix(w.group);
  int64_t r = row0;
  for (; r + 4 <= row1; r += 4) rows_block<Q, 4>(x, sdg, w, ix, r, y, ldy, r - row0);
  switch (row1 - r) {
    case 3: rows_block<Q, 3>(x, sdg, w, ix, r, y, ldy, r - row0); break;
    case 2: rows_block<Q, 2>(x, sdg, w, ix, r, y, ldy, r - row0); break;
    case 1: rows_block<Q, 1>(x, sdg, w, ix, r, y, ldy, r - row0); break;
    default: break;
  }
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

// quantize_activations (qformat.cc) 32 values at a time, with the same float operations
// (amax / max_code, x * (1 / s), round to nearest even) so the codes are identical.
void quantize_acts(const float* x, int64_t n, int64_t k, int8_t* q, float* d, float* sd, int32_t* qsum,
                  int max_code) {
  const int64_t nb = k / kActBlock;
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* v = x + t * k + b * kActBlock;
      const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, v0), _mm512_andnot_ps(sign, v1)));
      const float s = amax / float(max_code);
      const __m512 inv = _mm512_set1_ps(s != 0.f ? 1.0f / s : 0.f);
      const __m512i c0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, inv)), c1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, inv));
      int8_t* out = q + t * k + b * kActBlock;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtsepi32_epi8(c0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm512_cvtsepi32_epi8(c1));
      const int32_t sum = _mm512_reduce_add_epi32(_mm512_add_epi32(c0, c1));
      d[t * nb + b] = s;
      sd[t * nb + b] = s * float(sum);
      qsum[t * nb + b] = sum;
    }
}

}  // namespace
}  // namespace simd::avx512vnni

void fill_qkernels_avx512vnni(KernelTable* t) {
  t->qmatmul = simd::avx512vnni::qmatmul;
  t->qmatmul_name = "avx512_vnni (vpdpbusd)";
  t->quantize_acts = simd::avx512vnni::quantize_acts;
}

}  // namespace llmos

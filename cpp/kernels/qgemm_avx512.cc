// Quantized prefill on AVX-512 without VNNI: the packed int8 GEMM of qgemm_avx512.inc (design in
// qgemm_avx512vnni.cc) with vpmaddubsw (u8 x s8 -> int16 pair sums) in place of vpdpbusd.
//
// int16 must not saturate. Q4 codes (<= 15) give pair sums <= 2 * 15 * 127 = 3810, so a whole
// 32-value block (8 quads) sums in int16 (<= 30480) before one vpmaddwd widens it. Q6 codes
// (<= 63) allow two quads (<= 32004). Q8 codes (<= 255) would overflow one pair, so int8 weights
// run on 7-bit activations as on AVX2 (gemm_q8 below, qgemm_avx2.cc's design). The int16 sums
// use the saturating add all the same: unlike a plain add, the compiler cannot reassociate it
// into a tree that holds every product and spills.
//
// Measured as in qgemm_avx2.cc (forced to avx512), against the dequantizing prefill as it was:
// int4 73.7 -> 32.5 ms (2.3x), int6 99.1 -> 34.7 ms (2.9x). int8 with the sign trick ran ~0.8x
// the dequantizing path (46 ms); on 7-bit activations 49.1 -> 35.7 ms (1.4x; int4 31.7), and
// Qwen2.5-0.5B int8 prefill 222 -> 375 tok/s (2.2x llama.cpp's Q8_0 built for AVX-512).
#include <immintrin.h>

#include "kernels/kernels.h"
#include "kernels/transpose_avx512.h"

namespace llmos {
namespace simd::avx512 {
namespace {

#include "kernels/qcodes_avx512.inc"

constexpr uint32_t kGemmTypes = 1u << int(QuantType::Q4) | 1u << int(QuantType::Q4Asym) | 1u << int(QuantType::Q6);
// Q4: 12 int16 + 12 float accumulators; Q6 also keeps int32 sums: 4 tokens.
template <QuantType Q>
constexpr int kTokensFor = Q == QuantType::Q4 || Q == QuantType::Q4Asym ? 6 : 4;

// Keeps v in a register here: the compiler would otherwise reassociate a chain of integer adds
// into a tree that holds every product at once and spills.
inline void keep(__m512i& v) { asm("" : "+v"(v)); }

template <QuantType Q, int T>
inline void block_dots(const uint8_t* pc, const int8_t* xq, int64_t k, const int32_t* start, __m512i (*dot)[2]) {
  const __m512i ones = _mm512_set1_epi16(1);
  auto bcast = [&](int t, int j) {
    int32_t word;
    __builtin_memcpy(&word, xq + t * k + j * 4, 4);
    return _mm512_set1_epi32(word);
  };
  // Q4 / Q4Asym: int16 sums over the 8 quads; Q6: over pairs of quads.
  constexpr int kQuadsPerSum = Q == QuantType::Q6 ? 2 : 8;
  if (Q == QuantType::Q6)
    for (int t = 0; t < T; ++t) dot[t][0] = dot[t][1] = _mm512_set1_epi32(start[t]);
#pragma GCC unroll 4
  for (int j0 = 0; j0 < 8; j0 += kQuadsPerSum) {
    __m512i s16[T][2];
#pragma GCC unroll 8
    for (int j = j0; j < j0 + kQuadsPerSum; ++j) {
      const __m512i w0 = _mm512_load_si512(pc + j * 128), w1 = _mm512_load_si512(pc + j * 128 + 64);
      for (int t = 0; t < T; ++t) {
        const __m512i xb = bcast(t, j);
        const __m512i p0 = _mm512_maddubs_epi16(w0, xb), p1 = _mm512_maddubs_epi16(w1, xb);
        s16[t][0] = j == j0 ? p0 : _mm512_adds_epi16(s16[t][0], p0);
        s16[t][1] = j == j0 ? p1 : _mm512_adds_epi16(s16[t][1], p1);
      }
    }
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < 2; ++h) {
        const __m512i wide = _mm512_madd_epi16(s16[t][h], ones);
        dot[t][h] = Q == QuantType::Q6 ? _mm512_add_epi32(dot[t][h], wide)
                                       : _mm512_add_epi32(wide, _mm512_set1_epi32(start[t]));
        keep(dot[t][h]);
      }
  }
}

#include "kernels/qgemm_avx512.inc"

// int8 weights (Q8) on 7-bit activations, as qgemm_avx2.cc's gemm_q8 (the design there), 32
// rows (both halves) x 6 tokens per register tile.
constexpr int kQ8Tokens = 6;  // 12 int32 + 12 float accumulators, 2 weight vectors, 3 more: 29 of 32
constexpr int kActOffset = kActMaxCode7 + 1;

void sign_q8_panel(uint8_t* codes, int64_t nb, int32_t* start) {
  const __m512i flip = _mm512_set1_epi8(char(0x80)), ones8 = _mm512_set1_epi8(1), ones16 = _mm512_set1_epi16(1);
  for (int64_t b = 0; b < nb; ++b)
    for (int h = 0; h < 2; ++h) {
      __m512i sum = _mm512_setzero_si512();
      for (int j = 0; j < 8; ++j) {
        uint8_t* at = codes + ((b * 8 + j) * kPanelRows + h * 16) * 4;
        const __m512i w = _mm512_xor_si512(_mm512_load_si512(at), flip);
        _mm512_store_si512(at, w);
        sum = _mm512_add_epi32(sum, _mm512_madd_epi16(_mm512_maddubs_epi16(ones8, w), ones16));
      }
      _mm512_store_si512(start + b * kPanelRows + h * 16, _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(sum, 6)));
    }
}

template <int T>
void micro_q8(const uint8_t* xu, const float* xd, int64_t k, int64_t group, const Panel& p, const int32_t* start,
              float* y, int64_t ldy, __mmask16 m0, __mmask16 m1) {
  const int64_t nb = k / kActBlock, blocks_per_group = group / kActBlock;
  const __m512i ones = _mm512_set1_epi16(1);
  __m512 acc[T][2];
  for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  for (int64_t b = 0, g = 0, in_group = 0; b < nb; ++b) {
    __m512i dot[T][2];
    const __m512i st0 = _mm512_load_si512(start + b * kPanelRows), st1 = _mm512_load_si512(start + b * kPanelRows + 16);
    for (int t = 0; t < T; ++t) dot[t][0] = st0, dot[t][1] = st1;
    const uint8_t* pc = p.codes + b * 8 * kPanelRows * 4;
    const uint8_t* xb = xu + b * kActBlock;
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const __m512i w0 = _mm512_load_si512(pc + j * 128), w1 = _mm512_load_si512(pc + j * 128 + 64);
      for (int t = 0; t < T; ++t) {
        int32_t word;
        __builtin_memcpy(&word, xb + t * k + j * 4, 4);
        const __m512i a = _mm512_set1_epi32(word);
        dot[t][0] = _mm512_add_epi32(dot[t][0], _mm512_madd_epi16(_mm512_maddubs_epi16(a, w0), ones));
        dot[t][1] = _mm512_add_epi32(dot[t][1], _mm512_madd_epi16(_mm512_maddubs_epi16(a, w1), ones));
        keep(dot[t][0]);
        keep(dot[t][1]);
      }
    }
    const __m512 s0 = _mm512_load_ps(p.scale + g * kPanelRows), s1 = _mm512_load_ps(p.scale + g * kPanelRows + 16);
    for (int t = 0; t < T; ++t) {
      const __m512 d = _mm512_set1_ps(xd[t * nb + b]);
      acc[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t][0]), _mm512_mul_ps(s0, d), acc[t][0]);
      acc[t][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t][1]), _mm512_mul_ps(s1, d), acc[t][1]);
    }
    if (++in_group == blocks_per_group) in_group = 0, ++g;
  }
  for (int t = 0; t < T; ++t) {
    _mm512_mask_storeu_ps(y + t * ldy, m0, acc[t][0]);
    _mm512_mask_storeu_ps(y + t * ldy + 16, m1, acc[t][1]);
  }
}

template <int Max>
void q8_tokens(int n, const uint8_t* xu, const float* xd, int64_t k, int64_t group, const Panel& p,
               const int32_t* start, float* y, int64_t ldy, __mmask16 m0, __mmask16 m1) {
  if constexpr (Max > 0) {
    if (n == Max) micro_q8<Max>(xu, xd, k, group, p, start, y, ldy, m0, m1);
    else q8_tokens<Max - 1>(n, xu, xd, k, group, p, start, y, ldy, m0, m1);
  }
}

void gemm_q8(const ActView& x, const QView& w, int64_t row0, int64_t row1, float* y, int64_t ldy) {
  const int64_t k = w.cols, ng = k / w.group, nb = k / kActBlock;
  const size_t pbytes = size_t(panel_bytes(k, ng)), sbytes = size_t(nb * kPanelRows * 4);
  uint8_t* scratch = thread_scratch(pbytes + sbytes + size_t(x.n * k));
  const Panel p{scratch, reinterpret_cast<float*>(scratch + kPanelRows * k),
                reinterpret_cast<float*>(scratch + kPanelRows * k) + ng * kPanelRows};
  int32_t* start = reinterpret_cast<int32_t*>(scratch + pbytes);
  uint8_t* xu = scratch + pbytes + sbytes;
  // The activation codes offset to unsigned once per call (every panel reads them).
  const __m256i offset = _mm256_set1_epi8(kActOffset);
  for (int64_t i = 0; i < x.n * k; i += 32)  // k is a multiple of 64
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xu + i),
                        _mm256_add_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + i)), offset));
  for (int64_t r = row0; r < row1; r += kPanelRows) {
    const int nr = int(row1 - r < kPanelRows ? row1 - r : kPanelRows);
    pack_panel<QuantType::Q8>(w, r, nr, p);
    sign_q8_panel(p.codes, nb, start);
    const __mmask16 m0 = first_n(nr), m1 = first_n(nr - 16);
    float* yr = y + (r - row0);
    int64_t t = 0;
    for (; t + kQ8Tokens <= x.n; t += kQ8Tokens) {
      prefetch_rows(w, r + kPanelRows, kPanelRows, row1, t / kQ8Tokens, x.n / kQ8Tokens);
      micro_q8<kQ8Tokens>(xu + t * k, x.d + t * nb, k, w.group, p, start, yr + t * ldy, ldy, m0, m1);
    }
    q8_tokens<kQ8Tokens - 1>(int(x.n - t), xu + t * k, x.d + t * nb, k, w.group, p, start, yr + t * ldy, ldy, m0, m1);
  }
}

void qgemm_q8_first(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y,
                    int64_t ldy) {
  if (w.type == QuantType::Q8) gemm_q8(x, w, row0, row1, y, ldy);
  else qgemm(x, sdg, w, row0, row1, y, ldy);
}

}  // namespace
}  // namespace simd::avx512

void fill_qgemm_avx512(KernelTable* t) {
  t->qgemm_prefill = simd::avx512::qgemm_q8_first;
  t->qgemm_types = simd::avx512::kGemmTypes | 1u << int(QuantType::Q8);
  t->qgemm_acts7_types = 1u << int(QuantType::Q8);
}

}  // namespace llmos

// Quantized prefill on AVX-512 without VNNI: the packed int8 GEMM of qgemm_avx512.inc (design in
// qgemm_avx512vnni.cc) with vpmaddubsw (u8 x s8 -> int16 pair sums) in place of vpdpbusd.
//
// int16 must not saturate. Q4 codes (<= 15) give pair sums <= 2 * 15 * 127 = 3810, so a whole
// 32-value block (8 quads) sums in int16 (<= 30480) before one vpmaddwd widens it. Q6 codes
// (<= 63) allow two quads (<= 32004). Q8 codes (<= 255) would overflow one pair: they need the
// sign trick (|q| x (x * sign(q)) on signed q = u - 128), which was built and measured (below)
// and is not served. The int16 sums use the saturating add all the same: unlike a plain add,
// the compiler cannot reassociate it into a tree that holds every product and spills.
//
// Measured as in qgemm_avx2.cc (forced to avx512), against the dequantizing prefill as it was:
// int4 73.7 -> 32.5 ms (2.3x), int6 99.1 -> 34.7 ms (2.9x). int8 with the sign trick ran ~0.8x
// the dequantizing path (46 ms), so int8 keeps the float GEMM (kGemmTypes leaves it out).
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

}  // namespace
}  // namespace simd::avx512

void fill_qgemm_avx512(KernelTable* t) {
  t->qgemm_prefill = simd::avx512::qgemm;
  t->qgemm_types = simd::avx512::kGemmTypes;
}

}  // namespace llmos

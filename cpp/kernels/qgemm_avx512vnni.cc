// Quantized prefill on AVX-512 VNNI without AMX: a packed int8 GEMM (kernels.h qgemm_prefill).
//
// The row kernel (qmatmul_avx512vnni.cc) puts 64 input values of one (row, token) pair in a
// vector, so every vpdpbusd is followed by float work (convert, scale, accumulate) and every
// output by a horizontal sum. Here 32 weight rows are repacked per call, k-major, into a panel
// (quad j of the inputs: 16 rows x 4 codes per vector, Q4 / Q6 nibbles unpacked to bytes), and
// one vpdpbusd with a broadcast 4-byte activation word advances 16 rows of one token at once:
// a 6-token x 32-row register tile of int32 accumulators runs the 8 quads of a 32-value
// activation block, starting from -zp * sum(q) (the zero point, exact, as the row kernel), then
// one convert + multiply + FMA per block applies weight group scale x activation block scale.
// No horizontal sums; each token's 32 outputs are two vector stores.
//
// The panel (32 k bytes + the group scales) is built per call in the thread's scratch and stays
// in L2 while every token passes over it: weights at rest keep the one layout the decode row
// kernel, the ONNX export and GGUF read, and memory does not grow.
//
// Activations are the row kernel's (per token, blocks of 32: int8 codes, scale, exact sums), so
// the integer dot products are the same and prefill agrees with decode up to float summation
// order (tests/test_quant.py).
//
// Predicted before measuring: ~1.8x the row kernel (vpdpbusd-bound, 3 float ops per 8). Measured
// (tools/bench_qmatmul.py; Sapphire Rapids forced to avx512_vnni, 1 thread of a shared 2-core VM,
// 256 tokens, group 32, best of 11): int8 Qwen2.5-0.5B shapes 896->896 / 896->9728 / 4864->896
// 3.74 / 43.4 / 20.3 ms on the row kernel -> 1.06 / 16.6 / 5.87 ms (2.9x over the three: 53 ->
// 150 GMAC/s; 195 on the first); int4 70.3 -> 21.4 ms in all (3.3x). Qwen2.5-0.5B int8 prefill
// (tools/bench.py, 2 threads): 254 -> 605 tok/s.
#include <immintrin.h>

#include "kernels/kernels.h"
#include "kernels/transpose_avx512.h"

namespace llmos {
namespace simd::avx512vnni {
namespace {

#include "kernels/qcodes_avx512.inc"

// The VNNI step: one vpdpbusd per quad advances 16 rows of a token; the accumulators start
// at the zero point's term.
constexpr uint32_t kGemmTypes =
    1u << int(QuantType::Q8) | 1u << int(QuantType::Q4) | 1u << int(QuantType::Q4Asym) | 1u << int(QuantType::Q6);
template <QuantType>
constexpr int kTokensFor = 6;  // 12 int32 + 12 float accumulators, 2 panel vectors, 2 scales: 28 of 32

template <QuantType Q, int T>
inline void block_dots(const uint8_t* pc, const int8_t* xq, int64_t k, const int32_t* start, __m512i (*dot)[2]) {
  for (int t = 0; t < T; ++t) dot[t][0] = dot[t][1] = _mm512_set1_epi32(start[t]);
  for (int j = 0; j < 8; ++j) {
    const __m512i w0 = _mm512_load_si512(pc + j * 128);
    const __m512i w1 = _mm512_load_si512(pc + j * 128 + 64);
    for (int t = 0; t < T; ++t) {
      int32_t word;
      __builtin_memcpy(&word, xq + t * k + j * 4, 4);
      const __m512i xb = _mm512_set1_epi32(word);
      dot[t][0] = _mm512_dpbusd_epi32(dot[t][0], w0, xb);
      dot[t][1] = _mm512_dpbusd_epi32(dot[t][1], w1, xb);
    }
  }
}

#include "kernels/qgemm_avx512.inc"

}  // namespace
}  // namespace simd::avx512vnni

void fill_qgemm_avx512vnni(KernelTable* t) {
  t->qgemm_prefill = simd::avx512vnni::qgemm;
  t->qgemm_types = simd::avx512vnni::kGemmTypes;
  t->qgemm_acts7_types = 0;  // vpdpbusd sums in int32: full int8 activations
}

}  // namespace llmos

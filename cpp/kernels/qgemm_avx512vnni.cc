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
#include <immintrin.h>

#include "kernels/kernels.h"
#include "kernels/transpose_avx512.h"

namespace llmos {
namespace simd::avx512vnni {
namespace {

#include "kernels/qcodes_avx512.inc"

constexpr int kPanelRows = 32;  // two vectors of 16 rows
constexpr int kTokens = 6;      // 12 int32 + 12 float accumulators, 2 panel vectors, 2 scales: 28 of 32

// The panel of rows [r0, r0 + nr) (nr <= 32): codes[quad j][32 rows][4 bytes], then the
// weight scales as float [group g][32 rows] (and the mins, Q4Asym). Rows past nr are zero.
struct Panel {
  uint8_t* codes;
  float* scale;
  float* min;
};

inline int64_t panel_bytes(int64_t k, int64_t ng) { return kPanelRows * k + 2 * ng * kPanelRows * 4; }

template <QuantType Q>
void pack_panel(const QView& w, int64_t r0, int nr, const Panel& p) {
  const int64_t k = w.cols, ng = k / w.group, row_bytes = quant_row_bytes(Q, k);
  for (int half = 0; half < 2; ++half)
    for (int64_t c = 0; c < k / 64; ++c) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i) {
        const int r = half * 16 + i;
        v[i] = r < nr ? load_codes<Q>(w.codes + (r0 + r) * row_bytes, c) : _mm512_setzero_si512();
      }
      transpose16(v);  // v[j]: quad 16c + j of the 16 rows
      for (int j = 0; j < 16; ++j)
        _mm512_store_si512(p.codes + ((16 * c + j) * kPanelRows + half * 16) * 4, v[j]);
    }
  for (int i = 0; i < kPanelRows; ++i)
    for (int64_t g = 0; g < ng; ++g) {
      p.scale[g * kPanelRows + i] = i < nr ? _cvtsh_ss(w.scale[(r0 + i) * ng + g]) : 0.f;
      if (Q == QuantType::Q4Asym) p.min[g * kPanelRows + i] = i < nr ? _cvtsh_ss(w.min[(r0 + i) * ng + g]) : 0.f;
    }
}

// T tokens (x rows t0.., already offset) x the 32 panel rows; n0 / n1 real rows per half.
template <QuantType Q, int T>
void micro(const ActView& x, const float* sdg, int64_t t0, int64_t group, const Panel& p, float* y, int64_t ldy,
           __mmask16 m0, __mmask16 m1) {
  const int64_t k = x.k, nb = k / kActBlock, ng = k / group, blocks_per_group = group / kActBlock;
  constexpr int32_t kZp = Q == QuantType::Q8 ? 128 : Q == QuantType::Q4 ? 8 : Q == QuantType::Q6 ? 32 : 0;
  const int8_t* xq = x.q + t0 * k;
  const float* xd = x.d + t0 * nb;
  const int32_t* qsum = x.qsum + t0 * nb;
  __m512 acc[T][2];
  for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  for (int64_t b = 0, g = 0, in_group = 0; b < nb; ++b) {
    __m512i dot[T][2];
    for (int t = 0; t < T; ++t)
      dot[t][0] = dot[t][1] = kZp ? _mm512_set1_epi32(-kZp * qsum[t * nb + b]) : _mm512_setzero_si512();
    const uint8_t* pc = p.codes + b * 8 * kPanelRows * 4;
    for (int j = 0; j < 8; ++j) {
      const __m512i w0 = _mm512_load_si512(pc + j * kPanelRows * 4);
      const __m512i w1 = _mm512_load_si512(pc + j * kPanelRows * 4 + 64);
      for (int t = 0; t < T; ++t) {
        int32_t word;
        __builtin_memcpy(&word, xq + t * k + b * kActBlock + j * 4, 4);
        const __m512i xb = _mm512_set1_epi32(word);
        dot[t][0] = _mm512_dpbusd_epi32(dot[t][0], w0, xb);
        dot[t][1] = _mm512_dpbusd_epi32(dot[t][1], w1, xb);
      }
    }
    const __m512 s0 = _mm512_load_ps(p.scale + g * kPanelRows), s1 = _mm512_load_ps(p.scale + g * kPanelRows + 16);
    for (int t = 0; t < T; ++t) {
      const __m512 d = _mm512_set1_ps(xd[t * nb + b]);
      acc[t][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t][0]), _mm512_mul_ps(s0, d), acc[t][0]);
      acc[t][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[t][1]), _mm512_mul_ps(s1, d), acc[t][1]);
    }
    if (++in_group == blocks_per_group) in_group = 0, ++g;  // (no division per block)
  }
  if (Q == QuantType::Q4Asym)  // + sum over groups of m_w * sum_blocks(d_x * sum(q_x))
    for (int64_t g = 0; g < ng; ++g) {
      const __m512 n0 = _mm512_load_ps(p.min + g * kPanelRows), n1 = _mm512_load_ps(p.min + g * kPanelRows + 16);
      for (int t = 0; t < T; ++t) {
        const __m512 s = _mm512_set1_ps(sdg[(t0 + t) * ng + g]);
        acc[t][0] = _mm512_fmadd_ps(n0, s, acc[t][0]);
        acc[t][1] = _mm512_fmadd_ps(n1, s, acc[t][1]);
      }
    }
  for (int t = 0; t < T; ++t) {
    _mm512_mask_storeu_ps(y + t * ldy, m0, acc[t][0]);
    _mm512_mask_storeu_ps(y + t * ldy + 16, m1, acc[t][1]);
  }
}

inline __mmask16 first_n(int n) { return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1); }

template <QuantType Q>
void gemm_q(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y, int64_t ldy) {
  const int64_t k = w.cols, ng = k / w.group;
  uint8_t* scratch = thread_scratch(size_t(panel_bytes(k, ng)));
  const Panel p{scratch, reinterpret_cast<float*>(scratch + kPanelRows * k),
                reinterpret_cast<float*>(scratch + kPanelRows * k) + ng * kPanelRows};
  for (int64_t r = row0; r < row1; r += kPanelRows) {
    const int nr = int(row1 - r < kPanelRows ? row1 - r : kPanelRows);
    pack_panel<Q>(w, r, nr, p);
    const __mmask16 m0 = first_n(nr), m1 = first_n(nr - 16);
    float* yr = y + (r - row0);
    int64_t t = 0;
    for (; t + kTokens <= x.n; t += kTokens) micro<Q, kTokens>(x, sdg, t, w.group, p, yr + t * ldy, ldy, m0, m1);
    switch (x.n - t) {
      case 5: micro<Q, 5>(x, sdg, t, w.group, p, yr + t * ldy, ldy, m0, m1); break;
      case 4: micro<Q, 4>(x, sdg, t, w.group, p, yr + t * ldy, ldy, m0, m1); break;
      case 3: micro<Q, 3>(x, sdg, t, w.group, p, yr + t * ldy, ldy, m0, m1); break;
      case 2: micro<Q, 2>(x, sdg, t, w.group, p, yr + t * ldy, ldy, m0, m1); break;
      case 1: micro<Q, 1>(x, sdg, t, w.group, p, yr + t * ldy, ldy, m0, m1); break;
      default: break;
    }
  }
}

void qgemm(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y, int64_t ldy) {
  switch (w.type) {
    case QuantType::Q8: gemm_q<QuantType::Q8>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q4: gemm_q<QuantType::Q4>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q4Asym: gemm_q<QuantType::Q4Asym>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q6: gemm_q<QuantType::Q6>(x, sdg, w, row0, row1, y, ldy); break;
    default: break;
  }
}

}  // namespace
}  // namespace simd::avx512vnni

void fill_qgemm_avx512vnni(KernelTable* t) { t->qgemm_prefill = simd::avx512vnni::qgemm; }

}  // namespace llmos

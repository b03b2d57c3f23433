// Quantized prefill on AVX2: the packed int8 GEMM of qgemm_avx512vnni.cc (design there) in
// 256-bit vectors: 16 weight rows per panel (two vectors of 8), vpmaddubsw for the products.
//
// int16 must not saturate (see qgemm_avx512.cc): Q4 codes sum a whole 32-value block in int16,
// Q6 two quads. Q8 codes fill a signed byte, so int8 weights run on 7-bit activations (gemm_q8
// below; KernelTable::qgemm_acts7_types). 16 registers: Q4 keeps 3 tokens (6 int16 + 6 float
// accumulators), Q6 2 (+ int32 sums), Q8 6 tokens of one 8-row half.
//
// Measured with tools/bench_qmatmul.py (Sapphire Rapids forced to avx2, 1 thread of a shared
// 2-core VM, 256 tokens, group 32, best of 11; ms for the three Qwen2.5-0.5B shapes), against the
// dequantizing prefill as it was (scalar dequantization, then the float GEMM): int4 102.8 ->
// 42.2 (2.4x), int6 121.6 -> 49.7 (2.4x). int8 with the sign trick (|q| x (x * sign(q)), exact on
// 8-bit activations: 4 instructions per 32 multiply-adds, as the FMAs' 4) only matched the
// dequantizing path (74.1 -> 72.7); on 7-bit activations (3 instructions, two of them on the
// multiply ports as Q4's) 78.3 -> 48.6 (1.6x; int4 43.7), and Qwen2.5-0.5B int8 prefill
// (tools/bench.py, 2 threads) 166 -> 326 tok/s, 2.1x llama.cpp's Q8_0 built for AVX2. The price is
// the activations' rounding: NMSE ~1.1e-4 against float math where 8-bit codes give ~2.9e-5
// (tests/test_quant.py); docs/performance.md has what it does to logits.
#include <immintrin.h>

#include "kernels/kernels.h"
#include "kernels/transpose_avx2.h"

namespace llmos {
namespace simd::avx2 {
namespace {

#include "kernels/panel_prefetch.inc"
#include "kernels/qcodes_avx2.inc"

constexpr int kPanelRows = 16;  // two vectors of 8 rows
constexpr int kQuadBytes = kPanelRows * 4;
constexpr uint32_t kGemmTypes =
    1u << int(QuantType::Q8) | 1u << int(QuantType::Q4) | 1u << int(QuantType::Q4Asym) | 1u << int(QuantType::Q6);

template <QuantType Q>
constexpr int kTokensFor = Q == QuantType::Q4 || Q == QuantType::Q4Asym ? 3 : 2;

struct Panel {
  uint8_t* codes;  // [quad j][16 rows][4 bytes]
  float* scale;    // [group][16 rows]
  float* min;      // [group][16 rows], Q4Asym
};

inline int64_t panel_bytes(int64_t k, int64_t ng) { return kPanelRows * k + 2 * ng * kPanelRows * 4; }

template <QuantType Q>
void pack_panel(const QView& w, int64_t r0, int nr, const Panel& p) {
  const int64_t k = w.cols, ng = k / w.group, row_bytes = quant_row_bytes(Q, k);
  // Rows past nr: code 0; their scales are 0.
  const __m256i pad = _mm256_setzero_si256();
  for (int half = 0; half < 2; ++half)
    for (int64_t c = 0; c < k / 64; ++c) {
      __m256 lo[8], hi[8];
      for (int i = 0; i < 8; ++i) {
        const int r = half * 8 + i;
        __m256i a = pad, b = pad;
        if (r < nr) chunk_codes<Q>(w.codes + (r0 + r) * row_bytes, c, &a, &b);
        lo[i] = _mm256_castsi256_ps(a);
        hi[i] = _mm256_castsi256_ps(b);
      }
      transpose8(lo);  // lo[j]: quad 16c + j of the 8 rows
      transpose8(hi);  // hi[j]: quad 16c + 8 + j
      for (int j = 0; j < 8; ++j) {
        _mm256_store_ps(reinterpret_cast<float*>(p.codes + (16 * c + j) * kQuadBytes + half * 32), lo[j]);
        _mm256_store_ps(reinterpret_cast<float*>(p.codes + (16 * c + 8 + j) * kQuadBytes + half * 32), hi[j]);
      }
    }
  for (int i = 0; i < kPanelRows; ++i)
    for (int64_t g = 0; g < ng; ++g) {
      p.scale[g * kPanelRows + i] = i < nr ? _cvtsh_ss(w.scale[(r0 + i) * ng + g]) : 0.f;
      if (Q == QuantType::Q4Asym) p.min[g * kPanelRows + i] = i < nr ? _cvtsh_ss(w.min[(r0 + i) * ng + g]) : 0.f;
    }
}

// dot[t][h] = start[t] + the 32-value block's integer dot products (8 panel quads at pc).
// Keeps v in a register here: the compiler would otherwise reassociate a chain of integer adds
// into a tree that holds every product at once and spills.
inline void keep(__m256i& v) { asm("" : "+v"(v)); }

template <QuantType Q, int T>
inline void block_dots(const uint8_t* pc, const int8_t* xq, int64_t k, const int32_t* start, __m256i (*dot)[2]) {
  const __m256i ones = _mm256_set1_epi16(1);
  auto bcast = [&](int t, int j) {
    int32_t word;
    __builtin_memcpy(&word, xq + t * k + j * 4, 4);
    return _mm256_set1_epi32(word);
  };
  constexpr int kQuadsPerSum = Q == QuantType::Q6 ? 2 : 8;
  if (Q == QuantType::Q6)
    for (int t = 0; t < T; ++t) dot[t][0] = dot[t][1] = _mm256_set1_epi32(start[t]);
#pragma GCC unroll 4
  for (int j0 = 0; j0 < 8; j0 += kQuadsPerSum) {
    __m256i s16[T][2];
#pragma GCC unroll 8
    for (int j = j0; j < j0 + kQuadsPerSum; ++j) {
      const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pc + j * kQuadBytes));
      const __m256i w1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pc + j * kQuadBytes + 32));
      for (int t = 0; t < T; ++t) {
        const __m256i xb = bcast(t, j);
        const __m256i p0 = _mm256_maddubs_epi16(w0, xb), p1 = _mm256_maddubs_epi16(w1, xb);
        s16[t][0] = j == j0 ? p0 : _mm256_adds_epi16(s16[t][0], p0);
        s16[t][1] = j == j0 ? p1 : _mm256_adds_epi16(s16[t][1], p1);
      }
    }
    for (int t = 0; t < T; ++t)
      for (int h = 0; h < 2; ++h) {
        const __m256i wide = _mm256_madd_epi16(s16[t][h], ones);
        dot[t][h] = Q == QuantType::Q6 ? _mm256_add_epi32(dot[t][h], wide)
                                       : _mm256_add_epi32(wide, _mm256_set1_epi32(start[t]));
        keep(dot[t][h]);
      }
  }
}

inline __m256i first_n(int n) {
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lanes);
}

template <QuantType Q, int T>
void micro(const ActView& x, const float* sdg, int64_t t0, int64_t group, const Panel& p, float* y, int64_t ldy,
           int n0, int n1) {
  const int64_t k = x.k, nb = k / kActBlock, ng = k / group, blocks_per_group = group / kActBlock;
  constexpr int32_t kZp = Q == QuantType::Q4 ? 8 : Q == QuantType::Q6 ? 32 : 0;  // Q4Asym: 0
  const int8_t* xq = x.q + t0 * k;
  const float* xd = x.d + t0 * nb;
  const int32_t* qsum = x.qsum + t0 * nb;
  __m256 acc[T][2];
  for (int t = 0; t < T; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
  for (int64_t b = 0, g = 0, in_group = 0; b < nb; ++b) {
    __m256i dot[T][2];
    int32_t start[T];
    for (int t = 0; t < T; ++t) start[t] = -kZp * qsum[t * nb + b];
    block_dots<Q, T>(p.codes + b * 8 * kQuadBytes, xq + b * kActBlock, k, start, dot);
    const __m256 s0 = _mm256_load_ps(p.scale + g * kPanelRows), s1 = _mm256_load_ps(p.scale + g * kPanelRows + 8);
    for (int t = 0; t < T; ++t) {
      const __m256 d = _mm256_set1_ps(xd[t * nb + b]);
      acc[t][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t][0]), _mm256_mul_ps(s0, d), acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t][1]), _mm256_mul_ps(s1, d), acc[t][1]);
    }
    if (++in_group == blocks_per_group) in_group = 0, ++g;
  }
  if (Q == QuantType::Q4Asym)
    for (int64_t g = 0; g < ng; ++g) {
      const __m256 m0 = _mm256_load_ps(p.min + g * kPanelRows), m1 = _mm256_load_ps(p.min + g * kPanelRows + 8);
      for (int t = 0; t < T; ++t) {
        const __m256 s = _mm256_set1_ps(sdg[(t0 + t) * ng + g]);
        acc[t][0] = _mm256_fmadd_ps(m0, s, acc[t][0]);
        acc[t][1] = _mm256_fmadd_ps(m1, s, acc[t][1]);
      }
    }
  for (int t = 0; t < T; ++t) {
    if (n0 == 8 && n1 == 8) {
      _mm256_storeu_ps(y + t * ldy, acc[t][0]);
      _mm256_storeu_ps(y + t * ldy + 8, acc[t][1]);
    } else {
      _mm256_maskstore_ps(y + t * ldy, first_n(n0), acc[t][0]);
      _mm256_maskstore_ps(y + t * ldy + 8, first_n(n1), acc[t][1]);
    }
  }
}

template <QuantType Q, int Max>
void with_tokens(int n, const ActView& x, const float* sdg, int64_t t0, int64_t group, const Panel& p, float* y,
                 int64_t ldy, int n0, int n1) {
  if constexpr (Max > 0) {
    if (n == Max) micro<Q, Max>(x, sdg, t0, group, p, y, ldy, n0, n1);
    else with_tokens<Q, Max - 1>(n, x, sdg, t0, group, p, y, ldy, n0, n1);
  }
}

// int8 weights (Q8). A weight code takes the whole signed byte, so vpmaddubsw's unsigned
// operand is the activation: codes in [-63, 63] (KernelTable::qgemm_acts7_types) offset by 64
// to [1, 127], so a pair sum is at most 2 x 127 x 128 = 32512 and never saturates; vpmaddwd
// widens each product to int32 at once. The offset's term, -64 x the block's weight sum per
// row, is the dot products' starting value (computed at pack time). One 8-row half of the
// panel at a time keeps 6 tokens' int32 and float accumulators in the 16 registers, each
// weight vector loaded once for the 6.
constexpr int kQ8Tokens = 6;
constexpr int kActOffset = kActMaxCode7 + 1;

// After pack_panel<Q8>: codes to signed bytes (u - 128) and start[b][16 rows] = -64 x the
// row's sum of block b's codes.
void sign_q8_panel(uint8_t* codes, int64_t nb, int32_t* start) {
  const __m256i flip = _mm256_set1_epi8(char(0x80)), ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < nb; ++b)
    for (int h = 0; h < 2; ++h) {
      __m256i sum = _mm256_setzero_si256();
      for (int j = 0; j < 8; ++j) {
        __m256i* at = reinterpret_cast<__m256i*>(codes + (b * 8 + j) * kQuadBytes + h * 32);
        const __m256i w = _mm256_xor_si256(_mm256_load_si256(at), flip);
        _mm256_store_si256(at, w);
        sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, w), ones16));
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(start + b * kPanelRows + h * 8),
                         _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(sum, 6)));
    }
}

// y[t][0..nr) for T tokens (xu: token 0's offset codes, row stride k; xd: its block scales)
// and the panel's half h.
template <int T>
void micro_q8(const uint8_t* xu, const float* xd, int64_t k, int64_t group, const uint8_t* codes, const int32_t* start,
              const float* scale, int h, float* y, int64_t ldy, int nr) {
  const int64_t nb = k / kActBlock, blocks_per_group = group / kActBlock;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[T];
  for (int t = 0; t < T; ++t) acc[t] = _mm256_setzero_ps();
  for (int64_t b = 0, g = 0, in_group = 0; b < nb; ++b) {
    __m256i dot[T];
    const __m256i s0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(start + b * kPanelRows + h * 8));
    for (int t = 0; t < T; ++t) dot[t] = s0;
    const uint8_t* pc = codes + b * 8 * kQuadBytes + h * 32;
    const uint8_t* xb = xu + b * kActBlock;
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(pc + j * kQuadBytes));
      for (int t = 0; t < T; ++t) {
        int32_t word;
        __builtin_memcpy(&word, xb + t * k + j * 4, 4);
        const __m256i p = _mm256_maddubs_epi16(_mm256_set1_epi32(word), w);
        dot[t] = _mm256_add_epi32(dot[t], _mm256_madd_epi16(p, ones));
        keep(dot[t]);
      }
    }
    const __m256 s = _mm256_load_ps(scale + g * kPanelRows + h * 8);
    for (int t = 0; t < T; ++t)
      acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t]), _mm256_mul_ps(s, _mm256_set1_ps(xd[t * nb + b])), acc[t]);
    if (++in_group == blocks_per_group) in_group = 0, ++g;
  }
  for (int t = 0; t < T; ++t) {
    if (nr == 8) _mm256_storeu_ps(y + t * ldy, acc[t]);
    else _mm256_maskstore_ps(y + t * ldy, first_n(nr), acc[t]);
  }
}

template <int Max>
void q8_tokens(int n, const uint8_t* xu, const float* xd, int64_t k, int64_t group, const uint8_t* codes,
               const int32_t* start, const float* scale, int h, float* y, int64_t ldy, int nr) {
  if constexpr (Max > 0) {
    if (n == Max) micro_q8<Max>(xu, xd, k, group, codes, start, scale, h, y, ldy, nr);
    else q8_tokens<Max - 1>(n, xu, xd, k, group, codes, start, scale, h, y, ldy, nr);
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
  for (int64_t i = 0; i < x.n * k; i += 32)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(xu + i),
                        _mm256_add_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + i)), offset));
  for (int64_t r = row0; r < row1; r += kPanelRows) {
    const int nr = int(row1 - r < kPanelRows ? row1 - r : kPanelRows);
    pack_panel<QuantType::Q8>(w, r, nr, p);
    sign_q8_panel(p.codes, nb, start);
    const int64_t parts = 2 * (x.n / kQ8Tokens);  // both halves' full tiles
    for (int h = 0; h < 2; ++h) {
      const int nh = h == 0 ? (nr < 8 ? nr : 8) : nr - 8;
      if (nh <= 0) continue;
      float* yr = y + (r - row0) + h * 8;
      int64_t t = 0;
      for (; t + kQ8Tokens <= x.n; t += kQ8Tokens) {
        prefetch_rows(w, r + kPanelRows, kPanelRows, row1, h * (x.n / kQ8Tokens) + t / kQ8Tokens, parts);
        micro_q8<kQ8Tokens>(xu + t * k, x.d + t * nb, k, w.group, p.codes, start, p.scale, h, yr + t * ldy, ldy, nh);
      }
      q8_tokens<kQ8Tokens - 1>(int(x.n - t), xu + t * k, x.d + t * nb, k, w.group, p.codes, start, p.scale, h,
                               yr + t * ldy, ldy, nh);
    }
  }
}

template <QuantType Q>
void gemm_q(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y, int64_t ldy) {
  const int64_t k = w.cols, ng = k / w.group;
  uint8_t* scratch = thread_scratch(size_t(panel_bytes(k, ng)));
  const Panel p{scratch, reinterpret_cast<float*>(scratch + kPanelRows * k),
                reinterpret_cast<float*>(scratch + kPanelRows * k) + ng * kPanelRows};
  for (int64_t r = row0; r < row1; r += kPanelRows) {
    const int nr = int(row1 - r < kPanelRows ? row1 - r : kPanelRows);
    pack_panel<Q>(w, r, nr, p);
    const int n0 = nr < 8 ? nr : 8, n1 = nr - n0;
    float* yr = y + (r - row0);
    int64_t t = 0;
    for (; t + kTokensFor<Q> <= x.n; t += kTokensFor<Q>) {
      prefetch_rows(w, r + kPanelRows, kPanelRows, row1, t / kTokensFor<Q>, x.n / kTokensFor<Q>);
      micro<Q, kTokensFor<Q>>(x, sdg, t, w.group, p, yr + t * ldy, ldy, n0, n1);
    }
    with_tokens<Q, kTokensFor<Q> - 1>(int(x.n - t), x, sdg, t, w.group, p, yr + t * ldy, ldy, n0, n1);
  }
}

// Only the formats in kGemmTypes are instantiated (quantized_matmul.cc sends no others).
void qgemm(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y, int64_t ldy) {
  switch (w.type) {
    case QuantType::Q8: gemm_q8(x, w, row0, row1, y, ldy); break;
    case QuantType::Q4: gemm_q<QuantType::Q4>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q4Asym: gemm_q<QuantType::Q4Asym>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q6: gemm_q<QuantType::Q6>(x, sdg, w, row0, row1, y, ldy); break;
    default: break;
  }
}

}  // namespace
}  // namespace simd::avx2

void fill_qgemm_avx2(KernelTable* t) {
  t->qgemm_prefill = simd::avx2::qgemm;
  t->qgemm_types = simd::avx2::kGemmTypes;
  t->qgemm_acts7_types = 1u << int(QuantType::Q8);
}

}  // namespace llmos

// The quantized row kernel for CPUs with i8mm (compiled with +dotprod+i8mm; only runs where
// AT_HWCAP2 has I8MM). Pairs of tokens go through smmla (vmmlaq_s32): one instruction
// multiplies a 2x8 block of weights (two rows) by an 8x2 block of activations (two tokens)
// into a 2x2 tile of int32 sums, so each 64-value chunk of 4 rows is decoded once for
// every pair of tokens. The lanes of a tile hold the same exact integer per block as the
// sdot kernel (qmatmul_neon.inc), which serves a batch's odd last token here, so every token
// gets the same bits either way (qmatmul_neon.inc's numerics).
#include <arm_neon.h>

#include "kernels/kernels.h"

namespace llmos {
namespace simd::neon_i8mm {
namespace {

inline int32x4_t dot16(int8x16_t w, int8x16_t x, int32x4_t acc) { return vdotq_s32(acc, w, x); }

#include "kernels/qmatmul_neon.inc"

// Two 16-byte vectors a (row or token 0) and b (1) as smmla operands: lo = a[0..7] b[0..7],
// hi = a[8..15] b[8..15].
inline int8x16_t pair_lo(int8x16_t a, int8x16_t b) {
  return vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}
inline int8x16_t pair_hi(int8x16_t a, int8x16_t b) {
  return vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}

// Rows [r0, r0 + nr) (nr <= 4: two row pairs) for tokens t0 .. t0 + 2 TP - 1 (TP token pairs).
// Tile lanes: (row 2p, token a), (2p, b), (2p + 1, a), (2p + 1, b).
template <QuantType Q, int TP>
void tiles(const ActView& x, const float* sdg, const QView& w, int64_t r0, int nr, int64_t t0, float* y,
           int64_t ldy, int64_t out0) {
  const int64_t k = w.cols, ng = k / w.group, nb = k / kActBlock;
  const RowQuad rq(w, r0, nr);
  float32x4_t acc[2][TP];
  for (int p = 0; p < 2; ++p)
    for (int t = 0; t < TP; ++t) acc[p][t] = vdupq_n_f32(0.f);
  float32x4_t dw[2] = {vdupq_n_f32(0.f), vdupq_n_f32(0.f)};  // lanes (2p, 2p, 2p + 1, 2p + 1)
  int64_t dw_group = -1;
  for (int64_t c = 0; c < k / kChunk; ++c) {
    int8x16_t wv[4][4], wp[2][8];  // wp[p][2i], [2i + 1]: values 16i .. 16i + 7, 16i + 8 .. 16i + 15
    for (int r = 0; r < 4; ++r) chunk_codes<Q>(rq.codes[r], c, wv[r]);
    for (int p = 0; p < 2; ++p)
      for (int i = 0; i < 4; ++i)
        wp[p][2 * i] = pair_lo(wv[2 * p][i], wv[2 * p + 1][i]), wp[p][2 * i + 1] = pair_hi(wv[2 * p][i], wv[2 * p + 1][i]);
    for (int h = 0; h < 2; ++h) {
      const int64_t b = 2 * c + h, g = b * kActBlock / w.group;
      if (g != dw_group) {
        const float32x4_t d = halves4(rq.scale, g);
        dw[0] = vzip1q_f32(d, d), dw[1] = vzip2q_f32(d, d), dw_group = g;
      }
      for (int t = 0; t < TP; ++t) {
        const int64_t ta = t0 + 2 * t;
        const int8_t* xa = x.q + ta * k + b * kActBlock;
        const int8_t* xb = xa + k;
        const int8x16_t a0 = vld1q_s8(xa), a1 = vld1q_s8(xa + 16), b0 = vld1q_s8(xb), b1 = vld1q_s8(xb + 16);
        const int8x16_t xp[4] = {pair_lo(a0, b0), pair_hi(a0, b0), pair_lo(a1, b1), pair_hi(a1, b1)};
        const float32x2_t dx2 = {x.d[ta * nb + b], x.d[(ta + 1) * nb + b]};
        const float32x4_t dx = vcombine_f32(dx2, dx2);  // lanes (a, b, a, b)
        for (int p = 0; p < 2; ++p) {
          int32x4_t dots = vdupq_n_s32(0);
          for (int i = 0; i < 4; ++i) dots = vmmlaq_s32(dots, wp[p][4 * h + i], xp[i]);
          acc[p][t] = vfmaq_f32(acc[p][t], vcvtq_f32_s32(dots), vmulq_f32(dw[p], dx));
        }
      }
    }
  }
  if (Q != QuantType::Q8) {  // the zero-point terms, lane by lane as rows4 does them
    float32x4_t m[2][TP];
    for (int p = 0; p < 2; ++p)
      for (int t = 0; t < TP; ++t) m[p][t] = vdupq_n_f32(0.f);
    for (int64_t g = 0; g < ng; ++g) {
      const float32x4_t v = halves4(Q == QuantType::Q4Asym ? rq.min : rq.scale, g);
      const float32x4_t vp[2] = {vzip1q_f32(v, v), vzip2q_f32(v, v)};
      for (int t = 0; t < TP; ++t) {
        const int64_t ta = t0 + 2 * t;
        const float32x2_t s2 = {sdg[ta * ng + g], sdg[(ta + 1) * ng + g]};
        const float32x4_t s = vcombine_f32(s2, s2);
        for (int p = 0; p < 2; ++p) m[p][t] = vfmaq_f32(m[p][t], vp[p], s);
      }
    }
    for (int p = 0; p < 2; ++p)
      for (int t = 0; t < TP; ++t)
        acc[p][t] = Q == QuantType::Q4Asym ? vaddq_f32(acc[p][t], m[p][t])
                                           : vfmaq_n_f32(acc[p][t], m[p][t], -float(zero_point_of(Q)));
  }
  for (int p = 0; p < 2; ++p)
    for (int t = 0; t < TP; ++t) {
      float out[4];
      vst1q_f32(out, acc[p][t]);
      for (int i = 0; i < 2; ++i)
        if (2 * p + i < nr)
          for (int j = 0; j < 2; ++j) y[(t0 + 2 * t + j) * ldy + out0 + 2 * p + i] = out[2 * i + j];
    }
}

// 4 rows at a time: pairs of token pairs, then a pair, then the odd token with sdot.
template <QuantType Q>
void qmatmul_q(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y,
               int64_t ldy) {
  for (int64_t r = row0; r < row1; r += 4) {
    const int nr = row1 - r < 4 ? int(row1 - r) : 4;
    int64_t t = 0;
    for (; t + 4 <= x.n; t += 4) tiles<Q, 2>(x, sdg, w, r, nr, t, y, ldy, r - row0);
    for (; t + 2 <= x.n; t += 2) tiles<Q, 1>(x, sdg, w, r, nr, t, y, ldy, r - row0);
    if (t < x.n) rows4<Q, 1>(x, sdg, w, r, nr, t, y, ldy, r - row0);
  }
}

void qmatmul(const ActView& x, const float* sdg, const QView& w, int64_t row0, int64_t row1, float* y, int64_t ldy) {
  switch (w.type) {
    case QuantType::Q8: qmatmul_q<QuantType::Q8>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q4: qmatmul_q<QuantType::Q4>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q4Asym: qmatmul_q<QuantType::Q4Asym>(x, sdg, w, row0, row1, y, ldy); break;
    case QuantType::Q6: qmatmul_q<QuantType::Q6>(x, sdg, w, row0, row1, y, ldy); break;
    default: break;
  }
}

}  // namespace
}  // namespace simd::neon_i8mm

void fill_qkernels_neon_i8mm(KernelTable* t) {
  t->qmatmul = simd::neon_i8mm::qmatmul;
  t->qmatmul_name = "neon_i8mm (smmla for token pairs, sdot for an odd token)";
}

}  // namespace llmos

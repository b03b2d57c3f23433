// The AArch64 NEON (Advanced SIMD, baseline armv8-a) vector the shared kernel algorithms
// (*_simd.inc) are written over: 4 float lanes, 32 registers. For *_neon*.cc files only.
//
// As with vec_avx2.h, everything lives in llmos::simd::neon with internal linkage, so the
// dotprod / i8mm files (compiled with wider -march) can never lend a baseline caller a copy.
#pragma once

#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "kernels/kernels.h"

namespace llmos::simd::neon {
namespace {

struct Vec {
  using F = float32x4_t;
  using I = int32x4_t;
  using M = uint32x4_t;  // lane mask: every bit of a lane set or clear
  static constexpr int kLanes = 4;
  static constexpr int kRegisters = 32;
  // exp's lower clamp, as vec_avx2.h: scale_pow2 builds 2^n from exponent bits.
  static constexpr float kExpMin = -87.33654475f;

  static F zero() { return vdupq_n_f32(0.f); }
  static F set1(float a) { return vdupq_n_f32(a); }
  static F load(const float* p) { return vld1q_f32(p); }
  static F load_aligned(const float* p) { return vld1q_f32(p); }
  static void store(float* p, F v) { vst1q_f32(p, v); }
  static void store_aligned(float* p, F v) { vst1q_f32(p, v); }

  static M first(int n) { return vcltq_s32(vld1q_s32(kIota), vdupq_n_s32(n)); }
  // NEON has no masked load or store: tails go through a zeroed copy.
  static F load(const float* p, int n) {
    if (n >= kLanes) return load(p);
    float b[kLanes] = {};
    std::memcpy(b, p, size_t(n) * 4);
    return vld1q_f32(b);
  }
  static void store(float* p, F v, int n) {
    if (n >= kLanes) return store(p, v);
    float b[kLanes];
    vst1q_f32(b, v);
    std::memcpy(p, b, size_t(n) * 4);
  }
  static F load_bf16(const uint16_t* p) { return bf16(vld1_u16(p)); }
  static F load_bf16(const uint16_t* p, int n) { return n >= kLanes ? load_bf16(p) : bf16(load_halves(p, n)); }
  static F load_f16(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static F load_f16(const uint16_t* p, int n) {
    return n >= kLanes ? load_f16(p) : vcvt_f32_f16(vreinterpret_f16_u16(load_halves(p, n)));
  }
  static F gather(const float* p, int64_t stride, int n) {
    float b[kLanes];
    for (int i = 0; i < kLanes; ++i) b[i] = i < n ? p[i * stride] : 0.f;
    return vld1q_f32(b);
  }

  static F add(F a, F b) { return vaddq_f32(a, b); }
  static F sub(F a, F b) { return vsubq_f32(a, b); }
  static F mul(F a, F b) { return vmulq_f32(a, b); }
  static F div(F a, F b) { return vdivq_f32(a, b); }
  static F max(F a, F b) { return vmaxq_f32(a, b); }
  static F min(F a, F b) { return vminq_f32(a, b); }
  static F fma(F a, F b, F c) { return vfmaq_f32(c, a, b); }   // a * b + c, one rounding
  static F fnma(F a, F b, F c) { return vfmsq_f32(c, a, b); }  // c - a * b, one rounding
  static F round(F x) { return vrndnq_f32(x); }                // to nearest even
  // p * 2^n for integral n in [-126, 128], split in two normal factors as vec_avx2.h.
  static F scale_pow2(F p, F n) {
    const int32x4_t ni = vcvtnq_s32_f32(n);
    const int32x4_t h = vshrq_n_s32(ni, 1);
    const int32x4_t bias = vdupq_n_s32(127);
    const F s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(h, bias), 23));
    const F s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(vsubq_s32(ni, h), bias), 23));
    return vmulq_f32(vmulq_f32(p, s1), s2);
  }
  static float reduce_add(F v) { return vaddvq_f32(v); }
  static float reduce_max(F v) { return vmaxvq_f32(v); }
  static void transpose(F* r) {  // r[i] lane j <-> r[j] lane i
    const float32x4_t t0 = vtrn1q_f32(r[0], r[1]), t1 = vtrn2q_f32(r[0], r[1]);
    const float32x4_t t2 = vtrn1q_f32(r[2], r[3]), t3 = vtrn2q_f32(r[2], r[3]);
    r[0] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    r[1] = vreinterpretq_f32_f64(vtrn1q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
    r[2] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t0), vreinterpretq_f64_f32(t2)));
    r[3] = vreinterpretq_f32_f64(vtrn2q_f64(vreinterpretq_f64_f32(t1), vreinterpretq_f64_f32(t3)));
  }

  static M gt(F a, F b) { return vcgtq_f32(a, b); }
  static M and_(M a, M b) { return vandq_u32(a, b); }
  static F select(M m, F a, F b) { return vbslq_f32(m, a, b); }  // m ? a : b
  static I iota(int32_t base) { return vaddq_s32(vdupq_n_s32(base), vld1q_s32(kIota)); }
  static I set1i(int32_t a) { return vdupq_n_s32(a); }
  static I subi(I a, I b) { return vsubq_s32(a, b); }
  static M le(I a, I b) { return vcleq_s32(a, b); }

 private:
  static constexpr int32_t kIota[kLanes] = {0, 1, 2, 3};
  static F bf16(uint16x4_t h) { return vreinterpretq_f32_u32(vshll_n_u16(h, 16)); }
  static uint16x4_t load_halves(const uint16_t* p, int n) {
    uint16_t b[kLanes] = {};
    std::memcpy(b, p, size_t(n) * 2);
    return vld1_u16(b);
  }
};

using F = Vec::F;
using I = Vec::I;
using M = Vec::M;
constexpr int kLanes = Vec::kLanes;

#include "kernels/vec_math.inc"

}  // namespace
}  // namespace llmos::simd::neon

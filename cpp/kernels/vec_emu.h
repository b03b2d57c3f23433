// A portable 16-lane vector in plain C++ (arrays of floats), compiled for the baseline: the
// twin of vec_avx512.h, with the same operations in the same order (fused multiply-adds,
// GCC's reduction tree for _mm512_reduce_*, x86 max/min operand order, vscalefps as ldexp)
// and the same register count, so the shared algorithms (*_simd.inc) take every path of
// their AVX-512 instantiation: 16 query lanes, 32-row panels, the 14-token micro-kernel,
// masked tails. For tests only (kernels_emu.cc); far too slow to serve.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "core/dtype.h"
#include "kernels/kernels.h"

namespace llmos::simd::emu16 {
namespace {

struct Vec {
  static constexpr int kLanes = 16;
  static constexpr int kRegisters = 32;     // as AVX-512, so the algorithms block as they do there
  static constexpr float kExpMin = -104.0f;  // as vec_avx512.h: ldexp gives denormal results too
  struct F { float v[kLanes]; };
  struct I { int32_t v[kLanes]; };
  using M = uint32_t;  // bit i: lane i

  static F zero() { return set1(0.f); }
  static F set1(float a) {
    F r;
    for (float& x : r.v) x = a;
    return r;
  }
  static F load(const float* p) { return load(p, kLanes); }
  static F load_aligned(const float* p) { return load(p, kLanes); }
  static void store(float* p, F v) { store(p, v, kLanes); }
  static void store_aligned(float* p, F v) { store(p, v, kLanes); }

  static M first(int n) { return n >= kLanes ? M(0xffff) : M((1u << n) - 1); }
  static F load(const float* p, int n) {
    F r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = i < n ? p[i] : 0.f;
    return r;
  }
  static void store(float* p, F v, int n) {
    for (int i = 0; i < kLanes && i < n; ++i) p[i] = v.v[i];
  }
  static F load_bf16(const uint16_t* p, int n = kLanes) {
    F r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = i < n ? bf16_to_f32(p[i]) : 0.f;
    return r;
  }
  static F load_f16(const uint16_t* p, int n = kLanes) {
    F r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = i < n ? f16_to_f32(p[i]) : 0.f;
    return r;
  }
  static F gather(const float* p, int64_t stride, int n) {
    F r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = i < n ? p[i * stride] : 0.f;
    return r;
  }

  template <class Op>
  static F map(F a, F b, Op op) {
    F r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = op(a.v[i], b.v[i]);
    return r;
  }
  static F add(F a, F b) { return map(a, b, [](float x, float y) { return x + y; }); }
  static F sub(F a, F b) { return map(a, b, [](float x, float y) { return x - y; }); }
  static F mul(F a, F b) { return map(a, b, [](float x, float y) { return x * y; }); }
  static F div(F a, F b) { return map(a, b, [](float x, float y) { return x / y; }); }
  // maxps / minps: the second operand unless the first compares greater (less); NaN -> second.
  static F max(F a, F b) { return map(a, b, [](float x, float y) { return x > y ? x : y; }); }
  static F min(F a, F b) { return map(a, b, [](float x, float y) { return x < y ? x : y; }); }
  static F fma(F a, F b, F c) {
    F r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = std::fma(a.v[i], b.v[i], c.v[i]);
    return r;
  }
  static F fnma(F a, F b, F c) {
    F r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = std::fma(-a.v[i], b.v[i], c.v[i]);
    return r;
  }
  static F round(F x) {  // to nearest even (the default rounding mode)
    for (float& v : x.v) v = std::nearbyint(v);
    return x;
  }
  static F scale_pow2(F p, F n) {
    for (int i = 0; i < kLanes; ++i) p.v[i] = std::ldexp(p.v[i], int(n.v[i]));
    return p;
  }
  // GCC's _mm512_reduce_*_ps, operand order included: op(upper 8, lower 8), op(upper 4,
  // lower 4), op(lanes 0-1, lanes 2-3), op(lane 0, lane 1).
  template <class Op>
  static float reduce(F v, Op op) {
    for (int i = 0; i < 8; ++i) v.v[i] = op(v.v[i + 8], v.v[i]);
    for (int i = 0; i < 4; ++i) v.v[i] = op(v.v[i + 4], v.v[i]);
    for (int i = 0; i < 2; ++i) v.v[i] = op(v.v[i], v.v[i + 2]);
    return op(v.v[0], v.v[1]);
  }
  static float reduce_add(F v) { return reduce(v, [](float x, float y) { return x + y; }); }
  static float reduce_max(F v) { return reduce(v, [](float x, float y) { return x > y ? x : y; }); }
  static void transpose(F* r) {
    for (int i = 0; i < kLanes; ++i)
      for (int j = i + 1; j < kLanes; ++j) {
        const float t = r[i].v[j];
        r[i].v[j] = r[j].v[i];
        r[j].v[i] = t;
      }
  }

  static M gt(F a, F b) {
    M m = 0;
    for (int i = 0; i < kLanes; ++i) m |= M(a.v[i] > b.v[i]) << i;
    return m;
  }
  static M and_(M a, M b) { return a & b; }
  static F select(M m, F a, F b) {
    for (int i = 0; i < kLanes; ++i) b.v[i] = (m >> i) & 1 ? a.v[i] : b.v[i];
    return b;
  }
  static I iota(int32_t base) {
    I r;
    for (int i = 0; i < kLanes; ++i) r.v[i] = base + i;
    return r;
  }
  static I set1i(int32_t a) {
    I r;
    for (int32_t& x : r.v) x = a;
    return r;
  }
  static I subi(I a, I b) {  // wraps as vpsubd does
    for (int i = 0; i < kLanes; ++i) a.v[i] = int32_t(uint32_t(a.v[i]) - uint32_t(b.v[i]));
    return a;
  }
  static M le(I a, I b) {
    M m = 0;
    for (int i = 0; i < kLanes; ++i) m |= M(a.v[i] <= b.v[i]) << i;
    return m;
  }
};

using F = Vec::F;
using I = Vec::I;
using M = Vec::M;
constexpr int kLanes = Vec::kLanes;

#include "kernels/vec_math.inc"

}  // namespace
}  // namespace llmos::simd::emu16

// The AVX2 (+FMA, F16C) vector the shared kernel algorithms (*_simd.inc) are written over:
// 8 float lanes, 16 registers. For files compiled with AVX2 flags (*_avx2.cc) only.
//
// Everything here and in the .inc files each *_avx2.cc includes lives in
// llmos::simd::avx2 with internal linkage: no function compiled with AVX2 flags can share
// a name with a baseline one, so the linker can never hand a baseline caller an AVX2 copy
// (tests/test_isa_symbols.py checks every ISA object).
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/kernels.h"
#include "kernels/transpose_avx2.h"

namespace llmos::simd::avx2 {
namespace {

struct Vec {
  using F = __m256;
  using I = __m256i;  // int32 lanes
  using M = __m256;   // lane mask: every bit of a lane set or clear
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 16;
  // exp's lower clamp: scale_pow2 builds 2^n in the exponent bits, so n >= -126 and results
  // below 2^-126 flush to 0 (libm would give a denormal under 1.2e-38).
  static constexpr float kExpMin = -87.33654475f;

  static F zero() { return _mm256_setzero_ps(); }
  static F set1(float a) { return _mm256_set1_ps(a); }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F load_aligned(const float* p) { return _mm256_load_ps(p); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void store_aligned(float* p, F v) { _mm256_store_ps(p, v); }

  // The first n lanes (n >= kLanes: all); loads read only those elements and zero the rest.
  static M first(int n) { return _mm256_castsi256_ps(below(n)); }
  static F load(const float* p, int n) { return n >= kLanes ? load(p) : _mm256_maskload_ps(p, below(n)); }
  static void store(float* p, F v, int n) {
    if (n >= kLanes) store(p, v);
    else _mm256_maskstore_ps(p, below(n), v);
  }
  // bfloat16 / IEEE half weights widened to float32 (exact).
  static F load_bf16(const uint16_t* p) { return bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F load_bf16(const uint16_t* p, int n) { return n >= kLanes ? load_bf16(p) : bf16(load_halves(p, n)); }
  static F load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F load_f16(const uint16_t* p, int n) { return n >= kLanes ? load_f16(p) : _mm256_cvtph_ps(load_halves(p, n)); }
  // Lane i < n: p[i * stride]; the rest 0.
  static F gather(const float* p, int64_t stride, int n) {
    alignas(32) float b[kLanes];
    for (int i = 0; i < kLanes; ++i) b[i] = i < n ? p[i * stride] : 0.f;
    return _mm256_load_ps(b);
  }

  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static F sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F div(F a, F b) { return _mm256_div_ps(a, b); }
  static F max(F a, F b) { return _mm256_max_ps(a, b); }
  static F min(F a, F b) { return _mm256_min_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }    // a * b + c, one rounding
  static F fnma(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a * b, one rounding
  static F round(F x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // p * 2^n for integral n in [-126, 128]: 2^n = 2^(n/2) * 2^(n - n/2), both normal floats.
  static F scale_pow2(F p, F n) {
    const __m256i ni = _mm256_cvtps_epi32(n);
    const __m256i h = _mm256_srai_epi32(ni, 1);
    const __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, _mm256_set1_epi32(127)), 23));
    const __m256 s2 =
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), _mm256_set1_epi32(127)), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
  }
  static float reduce_add(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static float reduce_max(F v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static void transpose(F* r) { transpose8(r); }  // r[i] lane j <-> r[j] lane i

  static M gt(F a, F b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M and_(M a, M b) { return _mm256_and_ps(a, b); }
  static F select(M m, F a, F b) { return _mm256_blendv_ps(b, a, m); }  // m ? a : b
  static I iota(int32_t base) { return _mm256_add_epi32(_mm256_set1_epi32(base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
  static I set1i(int32_t a) { return _mm256_set1_epi32(a); }
  static I subi(I a, I b) { return _mm256_sub_epi32(a, b); }
  static M le(I a, I b) {  // a <= b, signed
    return _mm256_castsi256_ps(_mm256_xor_si256(_mm256_cmpgt_epi32(a, b), _mm256_set1_epi32(-1)));
  }

 private:
  static __m256i below(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
  static F bf16(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
  // AVX2 has no masked 16-bit load: the tail goes through a zeroed copy.
  static __m128i load_halves(const uint16_t* p, int n) {
    alignas(16) uint16_t b[kLanes] = {};
    std::memcpy(b, p, size_t(n) * 2);
    return _mm_load_si128(reinterpret_cast<const __m128i*>(b));
  }
};

using F = Vec::F;
using I = Vec::I;
using M = Vec::M;
constexpr int kLanes = Vec::kLanes;

#include "kernels/vec_math.inc"

}  // namespace
}  // namespace llmos::simd::avx2

// The AVX-512 vector the shared kernel algorithms (*_simd.inc) are written over: 16 float
// lanes, 32 registers, masked loads and stores for tails. For files compiled with AVX-512
// flags (*_avx512.cc) only.
//
// Everything here and in the .inc files each *_avx512.cc includes lives in
// llmos::simd::avx512 with internal linkage: no function compiled with AVX-512 flags can
// share a name with a baseline one, so the linker can never hand a baseline caller an AVX-512
// copy (tests/test_isa_symbols.py checks every ISA object).
//
// vec_emu.h is this type's portable twin (the same operations in the same order, on arrays):
// the algorithms' 16-lane instantiation runs on any CPU through it, so only this wrapper
// needs AVX-512 hardware to test.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include "kernels/kernels.h"
#include "kernels/transpose_avx512.h"

namespace llmos::simd::avx512 {
namespace {

struct Vec {
  using F = __m512;
  using I = __m512i;    // int32 lanes
  using M = __mmask16;  // lane mask
  static constexpr int kLanes = 16;
  static constexpr int kRegisters = 32;
  // exp's lower clamp: vscalefps gives denormal results, so below -104 the result is 0 (as
  // libm's, after denormals run out); -inf gives exactly 0.
  static constexpr float kExpMin = -104.0f;

  static F zero() { return _mm512_setzero_ps(); }
  static F set1(float a) { return _mm512_set1_ps(a); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F load_aligned(const float* p) { return _mm512_load_ps(p); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void store_aligned(float* p, F v) { _mm512_store_ps(p, v); }

  // The first n lanes (n >= kLanes: all); loads read only those elements and zero the rest.
  static M first(int n) { return n >= kLanes ? M(0xffff) : M((1u << n) - 1); }
  static F load(const float* p, int n) { return n >= kLanes ? load(p) : _mm512_maskz_loadu_ps(first(n), p); }
  static void store(float* p, F v, int n) {
    if (n >= kLanes) store(p, v);
    else _mm512_mask_storeu_ps(p, first(n), v);
  }
  // bfloat16 / IEEE half weights widened to float32 (exact).
  static F load_bf16(const uint16_t* p) { return bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static F load_bf16(const uint16_t* p, int n) {
    return n >= kLanes ? load_bf16(p) : bf16(_mm256_maskz_loadu_epi16(first(n), p));
  }
  static F load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static F load_f16(const uint16_t* p, int n) {
    return n >= kLanes ? load_f16(p) : _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(first(n), p));
  }
  // Lane i < n: p[i * stride]; the rest 0. The offsets are int32: i * stride * 4 bytes must
  // fit, as it does for a query block's row stride.
  static F gather(const float* p, int64_t stride, int n) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i idx = _mm512_mullo_epi32(lane, _mm512_set1_epi32(int32_t(stride)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), first(n), idx, p, 4);
  }

  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static F sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F div(F a, F b) { return _mm512_div_ps(a, b); }
  static F max(F a, F b) { return _mm512_max_ps(a, b); }
  static F min(F a, F b) { return _mm512_min_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }    // a * b + c, one rounding
  static F fnma(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b, one rounding
  static F round(F x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F scale_pow2(F p, F n) { return _mm512_scalef_ps(p, n); }  // p * 2^n, n integral
  static float reduce_add(F v) { return _mm512_reduce_add_ps(v); }
  static float reduce_max(F v) { return _mm512_reduce_max_ps(v); }
  static void transpose(F* r) { transpose16(r); }  // r[i] lane j <-> r[j] lane i

  static M gt(F a, F b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M and_(M a, M b) { return M(a & b); }
  static F select(M m, F a, F b) { return _mm512_mask_blend_ps(m, b, a); }  // m ? a : b
  static I iota(int32_t base) {
    return _mm512_add_epi32(_mm512_set1_epi32(base),
                            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  }
  static I set1i(int32_t a) { return _mm512_set1_epi32(a); }
  static I subi(I a, I b) { return _mm512_sub_epi32(a, b); }
  static M le(I a, I b) { return _mm512_cmp_epi32_mask(a, b, _MM_CMPINT_LE); }  // signed

 private:
  static F bf16(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
};

using F = Vec::F;
using I = Vec::I;
using M = Vec::M;
constexpr int kLanes = Vec::kLanes;

#include "kernels/vec_math.inc"

}  // namespace
}  // namespace llmos::simd::avx512

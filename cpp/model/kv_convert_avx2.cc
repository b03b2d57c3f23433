// float16 -> float32 widening for the paged KV cache's gather (F16C), picked at run time by
// kv_cache.cc when the CPU has AVX2 (which the build pairs with F16C and FMA). Only names in
// llmos::simd::avx2 and the entry point fill_kv_f16_avx2 are defined here
// (tests/test_isa_symbols.py).
#include <immintrin.h>

#include <cstdint>

namespace llmos::simd::avx2 {

void f16_to_f32_rows(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  if (i < n) {
    alignas(16) uint16_t h[8] = {};
    alignas(32) float f[8];
    for (int64_t j = i; j < n; ++j) h[j - i] = src[j];
    _mm256_store_ps(f, _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(h))));
    for (int64_t j = i; j < n; ++j) dst[j] = f[j - i];
  }
}

}  // namespace llmos::simd::avx2

namespace llmos {

void fill_kv_f16_avx2(void (**rows)(const uint16_t*, float*, int64_t)) { *rows = &simd::avx2::f16_to_f32_rows; }

}  // namespace llmos

// 16 x 16 transposes of 32-bit lanes for the files compiled with AVX-512 flags only.
// static: each including file keeps its own copy, so no AVX-512 code can be picked by the
// linker for a baseline caller.
#pragma once

#include <immintrin.h>

namespace llmos {

// In place: r[i] lane j becomes r[j] lane i.
static inline void transpose16(__m512i* r) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Now 128-bit lane L of r[4q + e] holds rows 4q..4q+3 of column 4L + e.
  for (int i = 0; i < 4; ++i) {
    const __m512i a = r[i], b = r[i + 4], c = r[i + 8], d = r[i + 12];
    const __m512i ab_lo = _mm512_shuffle_i32x4(a, b, 0x44), ab_hi = _mm512_shuffle_i32x4(a, b, 0xEE);
    const __m512i cd_lo = _mm512_shuffle_i32x4(c, d, 0x44), cd_hi = _mm512_shuffle_i32x4(c, d, 0xEE);
    t[i] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(ab_lo, cd_lo, 0xDD);
    t[i + 8] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(ab_hi, cd_hi, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

static inline void transpose16(__m512* rows) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_castps_si512(rows[i]);
  transpose16(r);
  for (int i = 0; i < 16; ++i) rows[i] = _mm512_castsi512_ps(r[i]);
}

}  // namespace llmos

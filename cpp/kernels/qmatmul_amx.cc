// AMX tile kernel for block-quantized weights (quant/qformat.h) and bfloat16 weights, for
// many tokens at once (prefill, batches). The weights of a chunk of rows are dequantized once
// into bfloat16 (in L2), and TDPBF16PS multiplies an A tile of 16 tokens x 32 activations by
// a B tile of the same 32 inputs of 16 weight rows, accumulating C [16 tokens][16 rows] in
// float32 inside the tile over the whole input dimension: nothing leaves the tile until the
// end, so the tile unit runs back to back.
//
// Why bfloat16 and not the int8 tiles (TDPBUSD): group scales change every 32 values, so an
// int8 product must leave the tile every 32 values to be scaled per (row, token); measured
// on this CPU that scaling costs twice the tile work and caps int8 at ~0.3 TMAC/s per core,
// while the bf16 path runs at ~1 TMAC/s. Numerically it is closer to float than int8
// activations: bf16 keeps 8 significant bits of each activation where per-block int8 keeps
// about 7 of the block's largest; the dequantized weight gains a relative rounding of 2^-9.
//
// Layouts (all 64-byte aligned):
//   activations (pack_tile_acts): bf16 [tokens rounded up to 16][k], row-major; tokens past
//     n are zero. A tiles: 16 tokens x 32 values, row stride 2k bytes.
//   weights: a chunk of rows, dequantized 16 rows at a time and laid out as B tiles: per 16
//     rows and 32 inputs, [16 input pairs][16 rows x 2] bf16 (1 KB).
//   results: C tiles [16 tokens][16 rows] float, stored straight into y.
#include <immintrin.h>

#include <cstdlib>

#include "kernels/kernels.h"
#include "kernels/transpose_avx512.h"

namespace llmos {
namespace simd::amx {
namespace {

constexpr int64_t kTile = 16;       // rows, tokens per tile
constexpr int64_t kStep = 32;       // input values per TDPBF16PS
constexpr int64_t kPanelBytes = 1 << 20;  // dequantized rows per chunk (stays in L2)

// GCC's tile intrinsics are asm statements that do not tell the compiler which memory they
// read (ldtilecfg claims 8 bytes, tileloadd none): without a barrier, stores to a tile
// config or to a buffer about to be loaded may be dropped or moved past them.
inline void memory_barrier() { __asm__ volatile("" ::: "memory"); }

struct TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Tiles 0-3: C (float [16 tokens][16 rows]) for (tokens 0, rows 0), (0, 1), (1, 0), (1, 1);
// 4-5: A (activations, bf16 [16 tokens][32 values]) for token tiles 0 and 1; 6-7: B
// (weights, bf16 [16 value pairs][16 rows x 2]) for row tiles 0 and 1.
void configure_tiles() {
  TileConfig c{};
  c.palette = 1;
  for (int t = 0; t < 8; ++t) { c.rows[t] = kTile; c.colsb[t] = 64; }
  memory_barrier();
  _tile_loadconfig(&c);
}

inline __mmask16 first_n(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

void pack_tile_acts(const float* x, int64_t n, int64_t k, int64_t tile0, int64_t tile1, uint8_t* out) {
  uint16_t* dst = reinterpret_cast<uint16_t*>(out);
  for (int64_t t = tile0 * kTile; t < tile1 * kTile; ++t)
    for (int64_t i = 0; i < k; i += kStep) {
      __m512i v = _mm512_setzero_si512();
      if (t < n) v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + t * k + i + 16), _mm512_loadu_ps(x + t * k + i));
      _mm512_store_si512(dst + t * k + i, v);
    }
}

// 16 rows of bf16 weights, row-major [16][k], as B tiles: for each 32 inputs, row p holds
// input pair p of each of the 16 rows (a transpose of 16 x 16 pairs).
void to_b_tiles(const uint16_t* rows16, int64_t k, uint8_t* dst) {
  for (int64_t s = 0; s < k / kStep; ++s) {
    __m512i r[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(rows16 + i * k + s * kStep);
    transpose16(r);
    for (int p = 0; p < 16; ++p) _mm512_store_si512(dst + s * 1024 + p * 64, r[p]);
  }
}

// Rows [r0, r0 + rows) of w as bf16, row-major [rows][k], at dst.
void dequantize_rows(const QView& w, int64_t r0, int64_t rows, uint16_t* dst) {
  const int64_t k = w.cols, ng = k / w.group, row_bytes = quant_row_bytes(w.type, k);
  const float zp = float(quant_zero_point(w.type));
  const __m512i nib = _mm512_set1_epi32(0x0F);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* codes = w.codes + (r0 + r) * row_bytes;
    const uint16_t* sc = w.scale + (r0 + r) * ng;
    const uint16_t* mn = w.min ? w.min + (r0 + r) * ng : nullptr;
    uint16_t* out = dst + r * k;
    for (int64_t i = 0; i < k; i += kStep) {
      const int64_t g = i / w.group;
      const float d = _cvtsh_ss(sc[g]);
      const __m512 dv = _mm512_set1_ps(d), mv = _mm512_set1_ps(mn ? _cvtsh_ss(mn[g]) : -zp * d);
      __m512i lo, hi;  // codes i..i+15 and i+16..i+31 as int32
      if (w.type == QuantType::Q8) {
        lo = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i)));
        hi = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + i + 16)));
      } else {
        // 64 values per 32 bytes: value j in the low nibble of byte j, value j + 32 in the
        // high nibble; i is either the first or the second half of a chunk. Q6 adds the
        // high 2 bits of value j + 16 q (j < 16) from bits 2q..2q+1 of byte 32 + j.
        const bool q6 = w.type == QuantType::Q6;
        const uint8_t* chunk = codes + (i / kQ4Chunk) * (q6 ? kQ6ChunkBytes : 32);
        const int shift = (i % kQ4Chunk) ? 4 : 0;
        lo = _mm512_and_si512(_mm512_srli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk))), shift), nib);
        hi = _mm512_and_si512(_mm512_srli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk + 16))), shift), nib);
        if (q6) {
          const __m512i h = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(chunk + 32)));
          const __m512i m3 = _mm512_set1_epi32(3);
          const int hs = (i % kQ4Chunk) ? 4 : 0;  // quarters 0-1 or 2-3
          lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h, hs), m3), 4));
          hi = _mm512_or_si512(hi, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(h, hs + 2), m3), 4));
        }
      }
      const __m512 wl = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lo), dv, mv);
      const __m512 wh = _mm512_fmadd_ps(_mm512_cvtepi32_ps(hi), dv, mv);
      _mm512_storeu_si512(out + i, (__m512i)_mm512_cvtne2ps_pbh(wh, wl));
    }
  }
}

// The tile intrinsics take tile numbers as literal tokens, hence macros. One k step: load
// the A tiles of the token tiles in use, the B tiles of the row tiles, multiply.
#define LLMOS_A(tile, tt) _tile_loadd(tile, a + (tt) * kTile * k + s * kStep, k * 2)
#define LLMOS_B(tile, ot) _tile_loadd(tile, b + (ot) * steps * 1024 + s * 1024, 64)

// 1 or 2 token tiles (of 16) x 1 or 2 row tiles (of 16) over the whole input dimension.
// a: the first token tile's bf16 activations (row stride k); b: the first row tile's B tiles.
// C tiles: 0 = (tokens 0, rows 0), 1 = (0, 1), 2 = (1, 0), 3 = (1, 1).
void block(int n_tt, int n_ot, const uint16_t* a, const uint8_t* b, int64_t k, float* cbuf, float* y, int64_t ldy,
           int64_t orow, int64_t t0, int64_t n) {
  const int64_t steps = k / kStep;
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  if (n_tt == 2 && n_ot == 2) {
    for (int64_t s = 0; s < steps; ++s) {
      LLMOS_A(4, 0); LLMOS_A(5, 1); LLMOS_B(6, 0); LLMOS_B(7, 1);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  } else if (n_tt == 2) {
    for (int64_t s = 0; s < steps; ++s) {
      LLMOS_A(4, 0); LLMOS_A(5, 1); LLMOS_B(6, 0);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(2, 5, 6);
    }
  } else if (n_ot == 2) {
    for (int64_t s = 0; s < steps; ++s) {
      LLMOS_A(4, 0); LLMOS_B(6, 0); LLMOS_B(7, 1);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
    }
  } else {
    for (int64_t s = 0; s < steps; ++s) {
      LLMOS_A(4, 0); LLMOS_B(6, 0);
      _tile_dpbf16ps(0, 4, 6);
    }
  }
  // Whole token tiles go straight to y; a partial one through cbuf.
  const bool full0 = t0 + kTile <= n, full1 = t0 + 2 * kTile <= n;
  float* y0 = y + t0 * ldy + orow;
  float* y1 = y0 + kTile * ldy;
  if (full0) {
    _tile_stored(0, y0, ldy * 4);
    if (n_ot == 2) _tile_stored(1, y0 + kTile, ldy * 4);
  } else {
    _tile_stored(0, cbuf, 64);
    _tile_stored(1, cbuf + 256, 64);
  }
  if (n_tt == 2) {
    if (full1) {
      _tile_stored(2, y1, ldy * 4);
      if (n_ot == 2) _tile_stored(3, y1 + kTile, ldy * 4);
    } else {
      _tile_stored(2, cbuf, 64);
      _tile_stored(3, cbuf + 256, 64);
    }
  }
  memory_barrier();
  const bool partial0 = !full0, partial1 = n_tt == 2 && !full1;
  if (partial0 || partial1) {
    const int64_t tp = partial0 ? t0 : t0 + kTile;  // the partial tile (only the last one can be)
    for (int64_t t = tp; t < n; ++t)
      for (int o = 0; o < n_ot; ++o)
        _mm512_storeu_ps(y + t * ldy + orow + o * kTile, _mm512_loadu_ps(cbuf + o * 256 + (t - tp) * 16));
  }
}

#undef LLMOS_A
#undef LLMOS_B

// The shared loop: rows [row0, row1) in chunks that stay in L2; `rows16` gives 16 rows of
// bf16 weights, row-major (dequantized into `buf`, or the weights themselves).
template <class Rows16>
void tiles(const uint8_t* acts, int64_t n, int64_t k, int64_t row0, int64_t row1, float* y, int64_t ldy,
           Rows16 rows16) {
  const int64_t steps = k / kStep, n_tiles = (n + kTile - 1) / kTile;
  int64_t chunk = (kPanelBytes / (k * 2)) & ~int64_t(2 * kTile - 1);
  if (chunk < 2 * kTile) chunk = 2 * kTile;
  if (chunk > row1 - row0) chunk = row1 - row0;
  const size_t panel_bytes = size_t(chunk * k * 2), rows16_bytes = size_t(kTile * k * 2);
  uint8_t* scratch = thread_scratch(panel_bytes + rows16_bytes + 2048);
  uint8_t* panel = scratch;
  uint16_t* buf = reinterpret_cast<uint16_t*>(scratch + panel_bytes);
  float* cbuf = reinterpret_cast<float*>(scratch + panel_bytes + rows16_bytes);
  const uint16_t* x = reinterpret_cast<const uint16_t*>(acts);
  configure_tiles();
  for (int64_t c0 = row0; c0 < row1; c0 += chunk) {
    const int64_t rows = row1 - c0 < chunk ? row1 - c0 : chunk;
    for (int64_t r = 0; r < rows; r += kTile) to_b_tiles(rows16(c0 + r, buf), k, panel + (r / kTile) * steps * 1024);
    memory_barrier();
    for (int64_t tt = 0; tt < n_tiles; tt += 2) {
      const int n_tt = tt + 1 < n_tiles ? 2 : 1;
      for (int64_t o = 0; o < rows; o += 2 * kTile) {
        const int n_ot = o + kTile < rows ? 2 : 1;
        block(n_tt, n_ot, x + tt * kTile * k, panel + (o / kTile) * steps * 1024, k, cbuf, y, ldy, c0 - row0 + o,
              tt * kTile, n);
      }
    }
  }
  _tile_release();
}

void qmatmul_tiles(const uint8_t* acts, int64_t n, const QView& w, int64_t row0, int64_t row1, float* y,
                   int64_t ldy) {
  tiles(acts, n, w.cols, row0, row1, y, ldy, [&](int64_t r, uint16_t* buf) -> const uint16_t* {
    dequantize_rows(w, r, kTile, buf);
    return buf;
  });
}

void matmul_tiles_bf16(const uint8_t* acts, int64_t n, int64_t k, const uint16_t* w, int64_t row0, int64_t row1,
                       float* y, int64_t ldy) {
  tiles(acts, n, k, row0, row1, y, ldy, [&](int64_t r, uint16_t*) { return w + r * k; });
}

}  // namespace
}  // namespace simd::amx

void fill_qkernels_amx(KernelTable* t) {
  t->pack_tile_acts = simd::amx::pack_tile_acts;
  t->qmatmul_tiles = simd::amx::qmatmul_tiles;
  t->matmul_tiles_bf16 = simd::amx::matmul_tiles_bf16;
}

}  // namespace llmos

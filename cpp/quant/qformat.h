// Block-quantized weight formats and int8 activations.
//
// A weight row of `cols` values is cut into groups of `group` (32, 64 or 128) along the
// input dimension. Each stored code u dequantizes as  w = d * u + m  with one scale d per
// group (float16) and, for the asymmetric format, one offset m per group (float16); the
// symmetric formats use m = -zero_point * d.
//   Q8:      u = q + 128 (uint8), q in [-127, 127], zero point 128
//   Q4:      u in [0, 15] (4 bits), q = u - 8, zero point 8 (as llama.cpp's Q4_0)
//   Q4_ASYM: u in [0, 15], w = d * u + min (AWQ / GPTQ style)
//   Q6:      u in [0, 63] (6 bits), q = u - 32, zero point 32 (the LM head under int4)
// Codes are unsigned so the integer dot product can use u8 x s8 instructions (VNNI
// vpdpbusd, AVX2 vpmaddubsw); the zero point comes back through m and sum(x).
//
// Q4 packs 64 values in 32 bytes: byte j holds u[j] in its low nibble and u[j + 32] in
// its high nibble, so one 32-byte load unpacks to 64 values in order.
//
// Q6 packs 64 values in 48 bytes: the first 32 bytes hold the low 4 bits of each code
// exactly as Q4 (byte j: u[j] & 15 in the low nibble, u[j + 32] & 15 in the high nibble),
// the next 16 bytes the high 2 bits: byte j (j < 16) holds u[j] >> 4 in bits 0-1,
// u[j + 16] >> 4 in bits 2-3, u[j + 32] >> 4 in bits 4-5 and u[j + 48] >> 4 in bits 6-7.
// A kernel unpacks the nibbles as for Q4 and ORs in the high bits, moved to bits 4-5 of
// each byte by one shift per 16-value quarter.
//
// Activations are quantized per token in blocks of 32 (kActBlock): int8 codes, a float
// scale per block, and d * sum(codes) per block, which the zero-point term needs.
#pragma once

#include <cstdint>

namespace llmos {

enum class QuantType : int32_t { None = 0, Q8 = 1, Q4 = 2, Q4Asym = 3, Q6 = 4 };

constexpr int64_t kActBlock = 32;
constexpr int64_t kQ4Chunk = 64;  // values per packed Q4 chunk (32 bytes), and per Q6 chunk
constexpr int64_t kQ6ChunkBytes = 48;  // bytes per packed Q6 chunk of 64 values

const char* quant_name(QuantType t);
int quant_zero_point(QuantType t);            // 128 (Q8), 8 (Q4), 32 (Q6), or 0 (asymmetric)
int64_t quant_row_bytes(QuantType t, int64_t cols);

// A read-only view of a quantized matrix [rows, cols] (plain data: kernels take it by value).
struct QView {
  QuantType type;
  int64_t rows, cols, group;
  const uint8_t* codes;   // [rows, quant_row_bytes]
  const uint16_t* scale;  // [rows, cols / group] float16
  const uint16_t* min;    // [rows, cols / group] float16, Q4Asym only (else null)
};

// Quantized activations for n tokens of k values (k a multiple of kActBlock).
struct ActView {
  const int8_t* q;     // [n, k]
  const float* d;      // [n, k / 32]
  const float* sd;     // [n, k / 32] = d * sum(q) of the block
  const int32_t* qsum; // [n, k / 32] = sum(q) of the block (exact)
  int64_t n, k;
};

// Quantizes one row (src float32, cols a multiple of group and, for Q4 and Q6 formats, of
// 64). Each group's scale: Q8, the largest magnitude on 127; Q4 and Q6, fitted for the
// group's least squared error (the extreme on a few codes at the end of the range, and each
// candidate's least-squares refit; qformat.cc); Q4_ASYM, (max - min) / 15 with m = min. The
// scale (and m) is stored as float16 first, then the codes are rounded to nearest with the
// stored values and clamped to the format's range. Writes quant_row_bytes codes and
// cols / group scales (and mins).
void quantize_row(QuantType t, int64_t group, const float* src, int64_t cols, uint8_t* codes,
                  uint16_t* scale, uint16_t* min);

// The float32 values of one row of a quantized matrix.
void dequantize_row(const QView& w, int64_t row, float* dst);

// Quantizes x [n, k] into q / d / sd / qsum (the ActView arrays): each block's scale is its
// largest magnitude on max_code, the codes are in [-max_code, max_code]. 127 everywhere but
// the packed GEMMs that multiply int8 weights with vpmaddubsw (kActMaxCode7, kernels.h).
void quantize_activations(const float* x, int64_t n, int64_t k, int8_t* q, float* d, float* sd, int32_t* qsum,
                          int max_code = 127);

}  // namespace llmos

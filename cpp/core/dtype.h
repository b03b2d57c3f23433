// Element types of stored tensors (the safetensors set) and scalar conversions.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace llmos {

enum class DType : uint8_t { BOOL, U8, I8, U16, I16, F16, BF16, U32, I32, F32, U64, I64, F64, F8_E4M3, F8_E5M2 };

// Size of one element in bytes.
inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::BOOL: case DType::U8: case DType::I8: case DType::F8_E4M3: case DType::F8_E5M2: return 1;
    case DType::U16: case DType::I16: case DType::F16: case DType::BF16: return 2;
    case DType::U32: case DType::I32: case DType::F32: return 4;
    case DType::U64: case DType::I64: case DType::F64: return 8;
  }
  return 0;
}

// The spelling used in safetensors headers ("F32", "BF16", ...).
inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::BOOL: return "BOOL"; case DType::U8: return "U8"; case DType::I8: return "I8";
    case DType::U16: return "U16"; case DType::I16: return "I16"; case DType::F16: return "F16";
    case DType::BF16: return "BF16"; case DType::U32: return "U32"; case DType::I32: return "I32";
    case DType::F32: return "F32"; case DType::U64: return "U64"; case DType::I64: return "I64";
    case DType::F64: return "F64"; case DType::F8_E4M3: return "F8_E4M3"; case DType::F8_E5M2: return "F8_E5M2";
  }
  return "?";
}

// Parses a safetensors dtype string; returns false when unknown.
inline bool dtype_from_name(const std::string& s, DType* out) {
  static const DType all[] = {DType::BOOL, DType::U8, DType::I8, DType::U16, DType::I16, DType::F16,
                              DType::BF16, DType::U32, DType::I32, DType::F32, DType::U64, DType::I64,
                              DType::F64, DType::F8_E4M3, DType::F8_E5M2};
  for (DType t : all)
    if (s == dtype_name(t)) { *out = t; return true; }
  return false;
}

inline float bf16_to_f32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as torch does when casting float32 -> bfloat16.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float f16_to_f32(uint16_t h);   // IEEE half -> float (exact)
uint16_t f32_to_f16(float f);   // float -> IEEE half, round to nearest even

}  // namespace llmos

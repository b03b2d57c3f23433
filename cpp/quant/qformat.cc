#include "quant/qformat.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"
#include "core/errors.h"

namespace llmos {

const char* quant_name(QuantType t) {
  switch (t) {
    case QuantType::None: return "none";
    case QuantType::Q8: return "int8";
    case QuantType::Q4: return "int4";
    case QuantType::Q4Asym: return "int4-asym";
  }
  return "?";
}

int quant_zero_point(QuantType t) {
  switch (t) {
    case QuantType::Q8: return 128;
    case QuantType::Q4: return 8;
    default: return 0;
  }
}

int64_t quant_row_bytes(QuantType t, int64_t cols) { return t == QuantType::Q8 ? cols : cols / 2; }

namespace {

void set_code(QuantType t, uint8_t* codes, int64_t i, int u) {
  if (t == QuantType::Q8) { codes[i] = uint8_t(u); return; }
  const int64_t chunk = i / kQ4Chunk, j = i % kQ4Chunk;
  uint8_t& b = codes[chunk * 32 + (j % 32)];
  b = j < 32 ? uint8_t((b & 0xF0) | u) : uint8_t((b & 0x0F) | (u << 4));
}

int get_code(QuantType t, const uint8_t* codes, int64_t i) {
  if (t == QuantType::Q8) return codes[i];
  const int64_t chunk = i / kQ4Chunk, j = i % kQ4Chunk;
  const uint8_t b = codes[chunk * 32 + (j % 32)];
  return j < 32 ? (b & 0x0F) : (b >> 4);
}

}  // namespace

void quantize_row(QuantType t, int64_t group, const float* src, int64_t cols, uint8_t* codes,
                  uint16_t* scale, uint16_t* min) {
  for (int64_t g = 0; g < cols / group; ++g) {
    const float* w = src + g * group;
    float d, m;
    if (t == QuantType::Q4Asym) {
      float lo = w[0], hi = w[0];
      for (int64_t i = 1; i < group; ++i) { lo = std::min(lo, w[i]); hi = std::max(hi, w[i]); }
      d = (hi - lo) / 15.0f;
      m = lo;
    } else {
      // Scale from the value of largest magnitude, keeping its sign for Q4 so the extreme
      // lands on the code -8, which has no positive twin (llama.cpp's Q4_0 choice).
      float amax = 0.f, vmax = 0.f;
      for (int64_t i = 0; i < group; ++i)
        if (std::fabs(w[i]) > amax) { amax = std::fabs(w[i]); vmax = w[i]; }
      d = t == QuantType::Q8 ? amax / 127.0f : vmax / -8.0f;
      m = 0.f;
    }
    // Store the scale as float16 first and quantize with the value the kernels will see.
    const uint16_t dh = f32_to_f16(d);
    const float dq = f16_to_f32(dh);
    scale[g] = dh;
    float mq = 0.f;
    if (t == QuantType::Q4Asym) {
      min[g] = f32_to_f16(m);
      mq = f16_to_f32(min[g]);
    }
    const float inv = dq != 0.f ? 1.0f / dq : 0.f;
    const int zp = quant_zero_point(t);
    const int hi_code = t == QuantType::Q8 ? 255 : 15;
    for (int64_t i = 0; i < group; ++i) {
      int u = t == QuantType::Q4Asym ? int(std::nearbyint((w[i] - mq) * inv)) : int(std::nearbyint(w[i] * inv)) + zp;
      u = std::clamp(u, t == QuantType::Q8 ? 1 : 0, hi_code);
      set_code(t, codes, g * group + i, u);
    }
  }
}

void dequantize_row(const QView& w, int64_t row, float* dst) {
  const uint8_t* codes = w.codes + row * quant_row_bytes(w.type, w.cols);
  const int64_t ng = w.cols / w.group;
  const int zp = quant_zero_point(w.type);
  for (int64_t g = 0; g < ng; ++g) {
    const float d = f16_to_f32(w.scale[row * ng + g]);
    const float m = w.type == QuantType::Q4Asym ? f16_to_f32(w.min[row * ng + g]) : -float(zp) * d;
    for (int64_t i = g * w.group; i < (g + 1) * w.group; ++i) dst[i] = d * float(get_code(w.type, codes, i)) + m;
  }
}

void quantize_activations(const float* x, int64_t n, int64_t k, int8_t* q, float* d, float* sd, int32_t* qsum) {
  const int64_t nb = k / kActBlock;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* v = x + t * k + b * kActBlock;
      float amax = 0.f;
      for (int64_t i = 0; i < kActBlock; ++i) amax = std::max(amax, std::fabs(v[i]));
      const float s = amax / 127.0f;
      const float inv = s != 0.f ? 1.0f / s : 0.f;
      int sum = 0;
      int8_t* out = q + t * k + b * kActBlock;
      for (int64_t i = 0; i < kActBlock; ++i) {
        const int c = int(std::nearbyint(v[i] * inv));
        out[i] = int8_t(c);
        sum += c;
      }
      d[t * nb + b] = s;
      sd[t * nb + b] = s * float(sum);
      qsum[t * nb + b] = sum;
    }
}

}  // namespace llmos

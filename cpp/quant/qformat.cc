#include "quant/qformat.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.h"
#include "core/errors.h"

namespace llmos {

const char* quant_name(QuantType t) {
  switch (t) {
    case QuantType::None: return "none";
    case QuantType::Q8: return "int8";
    case QuantType::Q4: return "int4";
    case QuantType::Q4Asym: return "int4-asym";
    case QuantType::Q6: return "int6";
  }
  return "?";
}

int quant_zero_point(QuantType t) {
  switch (t) {
    case QuantType::Q8: return 128;
    case QuantType::Q4: return 8;
    case QuantType::Q6: return 32;
    default: return 0;
  }
}

int64_t quant_row_bytes(QuantType t, int64_t cols) {
  switch (t) {
    case QuantType::Q8: return cols;
    case QuantType::Q6: return cols / kQ4Chunk * kQ6ChunkBytes;
    default: return cols / 2;
  }
}

namespace {

void set_code(QuantType t, uint8_t* codes, int64_t i, int u) {
  if (t == QuantType::Q8) { codes[i] = uint8_t(u); return; }
  const int64_t chunk = i / kQ4Chunk, j = i % kQ4Chunk;
  uint8_t* base = codes + chunk * (t == QuantType::Q6 ? kQ6ChunkBytes : 32);
  uint8_t& b = base[j % 32];
  const int lo = u & 0x0F;
  b = j < 32 ? uint8_t((b & 0xF0) | lo) : uint8_t((b & 0x0F) | (lo << 4));
  if (t == QuantType::Q6) {
    uint8_t& h = base[32 + j % 16];
    const int shift = 2 * int(j / 16);
    h = uint8_t((h & ~(3 << shift)) | ((u >> 4) << shift));
  }
}

int get_code(QuantType t, const uint8_t* codes, int64_t i) {
  if (t == QuantType::Q8) return codes[i];
  const int64_t chunk = i / kQ4Chunk, j = i % kQ4Chunk;
  const uint8_t* base = codes + chunk * (t == QuantType::Q6 ? kQ6ChunkBytes : 32);
  const uint8_t b = base[j % 32];
  const int lo = j < 32 ? (b & 0x0F) : (b >> 4);
  if (t != QuantType::Q6) return lo;
  return lo | (((base[32 + j % 16] >> (2 * int(j / 16))) & 3) << 4);
}

// Q6 code arithmetic: x + 1.5 * 2^23 rounds x to an integer (to nearest even, as nearbyint
// does) in the low mantissa bits, for |x| < 2^22 (here |x| <= 64); the integer is clamped to
// [-32, 31] as an integer: float compares would keep the loops below from vectorizing under
// the default -ftrapping-math.
template <int Lo, int Hi>
inline int32_t round_clamp(float x) {
  const float t = x + 12582912.0f;
  int32_t k;
  std::memcpy(&k, &t, 4);
  k -= 0x4B400000;
  k = k > Lo ? k : Lo;
  return k < Hi ? k : Hi;
}

inline int32_t q6_round_clamp(float x) { return round_clamp<-32, 31>(x); }

// A symmetric scale by search (Q6, Q4): candidates put the value of largest magnitude (its
// sign kept) on -(nominal + c * step) for c in [c_lo, c_hi]; with `refit`, each candidate's
// codes (clamped to [Lo, Hi]) also give a least-squares scale sum(w q) / sum(q q). The
// least squared error wins.
template <int Lo, int Hi>
float searched_scale(const float* w, int64_t n, float nominal, float step, int c_lo, int c_hi, bool refit) {
  float amax = 0.f, vmax = 0.f;
  for (int64_t i = 0; i < n; ++i)
    if (std::fabs(w[i]) > amax) { amax = std::fabs(w[i]); vmax = w[i]; }
  if (amax == 0.f) return 0.f;
  constexpr int kLanes = 8;  // n is a multiple of 32; lanes let the sums vectorize
  const float neg_inv_vmax = -1.0f / vmax;
  float best = vmax / -nominal, best_err = INFINITY;
  for (int c = c_lo; c <= c_hi; ++c) {
    const float inv = (nominal + step * float(c)) * neg_inv_vmax;
    float swq_l[kLanes] = {}, sqq_l[kLanes] = {};
    for (int64_t i = 0; i < n; i += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const float q = float(round_clamp<Lo, Hi>(w[i + l] * inv));
        swq_l[l] += w[i + l] * q;
        sqq_l[l] += q * q;
      }
    float swq = 0.f, sqq = 0.f;
    for (int l = 0; l < kLanes; ++l) { swq += swq_l[l]; sqq += sqq_l[l]; }
    // The squared error of scale d with these codes, less the constant sum(w^2), is
    // d^2 sqq - 2 d swq: at d = 1 / inv, and at its minimum d = swq / sqq (-swq^2 / sqq).
    const float d = 1.0f / inv;
    const float err = d * d * sqq - 2.0f * d * swq;
    if (err < best_err) { best_err = err; best = d; }
    if (refit && sqq > 0.f && -swq * swq / sqq < best_err) { best_err = -swq * swq / sqq; best = swq / sqq; }
  }
  return best;
}

// Q6's scale: the extreme on -(32 + c / 4), c in [-4, 4], and the refits: for Gaussian
// weights ~12% less error than the extreme on -32 alone (4.5e-4 -> 4.0e-4 of the weights'
// energy). quantize_row rounds the winner to float16 and rounds the codes again with it.
float q6_scale(const float* w, int64_t n) { return searched_scale<-32, 31>(w, n, 32.0f, 0.25f, -4, 4, true); }

// Q4's scale: the least squared error among the extreme on -(8 + c / 8), c in [-8, 8], and
// each candidate's least-squares refit. Gaussian NMSE at group 32: 6.6e-3, against 7.4e-3
// for Q4_0's rule (the extreme on -8) alone; the fit may clamp a group's extreme by about a step.
float q4_scale(const float* w, int64_t n) { return searched_scale<-8, 7>(w, n, 8.0f, 0.125f, -8, 8, true); }

// A Q6 row: codes rounded per group, then packed per 64-value chunk (qformat.h).
void quantize_row_q6(int64_t group, const float* src, int64_t cols, uint8_t* codes, uint16_t* scale) {
  std::vector<uint8_t> u(static_cast<size_t>(cols));
  for (int64_t g = 0; g < cols / group; ++g) {
    const float* w = src + g * group;
    const uint16_t dh = f32_to_f16(q6_scale(w, group));
    const float dq = f16_to_f32(dh);
    scale[g] = dh;
    const float inv = dq != 0.f ? 1.0f / dq : 0.f;
    uint8_t* ug = u.data() + g * group;
    for (int64_t i = 0; i < group; ++i) ug[i] = uint8_t(q6_round_clamp(w[i] * inv) + 32);
  }
  for (int64_t c = 0; c < cols / kQ4Chunk; ++c) {
    const uint8_t* uc = u.data() + c * kQ4Chunk;
    uint8_t* out = codes + c * kQ6ChunkBytes;
    for (int j = 0; j < 32; ++j) out[j] = uint8_t((uc[j] & 0x0F) | ((uc[j + 32] & 0x0F) << 4));
    for (int j = 0; j < 16; ++j)
      out[32 + j] = uint8_t((uc[j] >> 4) | ((uc[j + 16] >> 4) << 2) | ((uc[j + 32] >> 4) << 4) | ((uc[j + 48] >> 4) << 6));
  }
}

}  // namespace

void quantize_row(QuantType t, int64_t group, const float* src, int64_t cols, uint8_t* codes,
                  uint16_t* scale, uint16_t* min) {
  if (t == QuantType::Q6) {
    quantize_row_q6(group, src, cols, codes, scale);
    return;
  }
  for (int64_t g = 0; g < cols / group; ++g) {
    const float* w = src + g * group;
    float d, m;
    if (t == QuantType::Q4Asym) {
      float lo = w[0], hi = w[0];
      for (int64_t i = 1; i < group; ++i) { lo = std::min(lo, w[i]); hi = std::max(hi, w[i]); }
      d = (hi - lo) / 15.0f;
      m = lo;
    } else {
      // Q8: the value of largest magnitude on +-127. Q4: fitted (q4_scale) around Q4_0's
      // choice, the extreme (its sign kept) on the code -8, which has no positive twin.
      float amax = 0.f, vmax = 0.f;
      for (int64_t i = 0; i < group; ++i)
        if (std::fabs(w[i]) > amax) { amax = std::fabs(w[i]); vmax = w[i]; }
      d = t == QuantType::Q8 ? amax / 127.0f : q4_scale(w, group);
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

void quantize_activations(const float* x, int64_t n, int64_t k, int8_t* q, float* d, float* sd, int32_t* qsum,
                          int max_code) {
  const int64_t nb = k / kActBlock;
  for (int64_t t = 0; t < n; ++t)
    for (int64_t b = 0; b < nb; ++b) {
      const float* v = x + t * k + b * kActBlock;
      float amax = 0.f;
      for (int64_t i = 0; i < kActBlock; ++i) amax = std::max(amax, std::fabs(v[i]));
      const float s = amax / float(max_code);
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

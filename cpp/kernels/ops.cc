#include "kernels/ops.h"

#include <cmath>

namespace llmos {

void norm_row(NormKind kind, const float* x, const float* w, const float* b, float eps, int64_t n, float* out) {
  if (kind == NormKind::RMSNorm) {
    float ss = 0.f;
    for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const float r = 1.0f / std::sqrt(ss / float(n) + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * r * w[i];
  } else {
    float mean = 0.f;
    for (int64_t i = 0; i < n; ++i) mean += x[i];
    mean /= float(n);
    float var = 0.f;
    for (int64_t i = 0; i < n; ++i) var += (x[i] - mean) * (x[i] - mean);
    var /= float(n);
    const float r = 1.0f / std::sqrt(var + eps);
    for (int64_t i = 0; i < n; ++i) out[i] = (x[i] - mean) * r * w[i] + (b ? b[i] : 0.f);
  }
  if (b && kind == NormKind::RMSNorm)
    for (int64_t i = 0; i < n; ++i) out[i] += b[i];
}

void rope_head(float* x, const float* cos_t, const float* sin_t, int64_t rotary_dim) {
  const int64_t half = rotary_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * cos_t[i] - b * sin_t[i];
    x[i + half] = b * cos_t[i] + a * sin_t[i];
  }
}

namespace {
inline float act1(Activation a, float v) {
  switch (a) {
    case Activation::Silu: return v / (1.0f + std::exp(-v));
    case Activation::GeluErf: return 0.5f * v * (1.0f + std::erf(v * 0.70710678118654752f));
    case Activation::GeluTanh: {
      // 0.5 * v * (1 + tanh(u)) written as v * sigmoid(2u): the same value without the
      // cancellation of 1 + tanh(u) for negative v.
      const float k = 0.79788456080286536f;  // sqrt(2 / pi)
      return v / (1.0f + std::exp(-2.0f * k * (v + 0.044715f * v * v * v)));
    }
    case Activation::Relu: return v > 0.f ? v : 0.f;
  }
  return v;
}
}  // namespace

void activate(Activation a, float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = act1(a, x[i]);
}

void activate_gated(Activation a, const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = act1(a, gate[i]) * up[i];
}

void softmax(float* x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) { x[i] = std::exp(x[i] - m); s += x[i]; }
  const float inv = 1.0f / s;
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

}  // namespace llmos

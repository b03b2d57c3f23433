// Element-wise and row-wise ops of the forward pass, in float32. Each works on one row or
// one head, so the decoder threads them over tokens and heads.
#pragma once

#include <cstdint>

#include "model/arch.h"

namespace llmos {

// out = norm(x) * w (+ b): LayerNorm (mean and variance) or RMSNorm, over n values.
// `out` may alias `x`. b may be null.
void norm_row(NormKind kind, const float* x, const float* w, const float* b, float eps, int64_t n, float* out);

// Rotates the first rotary_dim values of one head in place (rotate-half layout: element i
// pairs with i + rotary_dim / 2), by angles pos * inv_freq[i], cos/sin scaled by `scale`.
void rope_head(float* x, const float* cos_t, const float* sin_t, int64_t rotary_dim);

// act(x) in place; gated: x[i] = act(gate[i]) * up[i] written to out.
void activate(Activation a, float* x, int64_t n);
void activate_gated(Activation a, const float* gate, const float* up, float* out, int64_t n);

// In-place softmax over n values; returns nothing, the values sum to 1.
void softmax(float* x, int64_t n);

}  // namespace llmos

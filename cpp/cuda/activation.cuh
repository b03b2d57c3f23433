// The activations of model/arch.h on the device: the formulas of kernels/ops.cc's act1, with
// the accurate expf / erff (not the fast intrinsics), so results match the CPU's scalar
// reference to float rounding. Shared by activation.cu and forward_ops.cu.
#pragma once

#include <cuda_runtime.h>

#include "model/arch.h"

namespace llmos::cuda {

template <int Act>
__device__ __forceinline__ float act1(float v) {
  if (Act == int(Activation::Silu)) return v / (1.0f + expf(-v));
  if (Act == int(Activation::GeluErf)) return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
  if (Act == int(Activation::GeluTanh)) {
    const float k = 0.79788456080286536f;  // sqrt(2 / pi); v * sigmoid(2u) as ops.cc writes it
    return v / (1.0f + expf(-2.0f * k * (v + 0.044715f * v * v * v)));
  }
  return v > 0.f ? v : 0.f;  // Relu
}

}  // namespace llmos::cuda

// Gated activations (SiLU * up and its siblings), element-wise: the formulas of
// kernels/ops.cc's act1, with the accurate expf / erff (not the fast intrinsics), so the
// result matches the CPU's scalar reference to float rounding.
#include <cuda_runtime.h>

#include "cuda/activation.cuh"
#include "cuda/cuda_check.cuh"
#include "cuda/cuda_ops.h"
#include "model/arch.h"

namespace llmos::cuda {

namespace {

template <int Act>
__global__ void gated_kernel(const float* __restrict__ gate, const float* __restrict__ up, float* __restrict__ out,
                             int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    out[i] = act1<Act>(gate[i]) * up[i];
}

}  // namespace

void activate_gated(int act, const float* gate, const float* up, float* out, int64_t n, Stream s) {
  require(act >= int(Activation::Silu) && act <= int(Activation::Relu), "act", "expected an Activation value (0..3)");
  require(n >= 1, "x", "expected at least one value");
  require(gate && up && out, "x", "null device pointer");
  constexpr int kThreads = 256;
  const int64_t want = (n + kThreads - 1) / kThreads;
  const unsigned blocks = unsigned(want < 65535 ? want : 65535);  // grid-stride beyond that
  switch (act) {
    case int(Activation::Silu): gated_kernel<int(Activation::Silu)><<<blocks, kThreads, 0, s>>>(gate, up, out, n); break;
    case int(Activation::GeluErf): gated_kernel<int(Activation::GeluErf)><<<blocks, kThreads, 0, s>>>(gate, up, out, n); break;
    case int(Activation::GeluTanh): gated_kernel<int(Activation::GeluTanh)><<<blocks, kThreads, 0, s>>>(gate, up, out, n); break;
    default: gated_kernel<int(Activation::Relu)><<<blocks, kThreads, 0, s>>>(gate, up, out, n); break;
  }
  check_launch("activate_gated");
}

}  // namespace llmos::cuda

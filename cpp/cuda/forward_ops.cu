// The small ops of the decoder's forward pass on the GPU (model/decoder_cuda.cc), each the
// twin of a CPU step in model/decoder.cc: norms over rows with a stride (the residual stream,
// the q/k heads inside a qkv row), rotary embedding in place, appending k and v to the cache,
// the MLP's activation, bias and residual adds, and the logits' scale and soft cap. They work
// on tokens stacked as rows, with the row strides the decoder's buffers have.
#include <cuda_runtime.h>

#include <cmath>

#include "cuda/activation.cuh"
#include "cuda/cuda_check.cuh"
#include "cuda/cuda_ops.h"
#include "cuda/reduce.cuh"

namespace llmos::cuda {

namespace {

constexpr int kNormThreads = 256;

// One block per row r: row = x + (r / per) * ld + (r % per) * n (per rows of n values inside each
// strided row), normalized over its n values into out (same layout, may alias x).
__global__ void norm_kernel(const float* x, int64_t ld, int64_t per, int64_t n, const float* __restrict__ w,
                            const float* __restrict__ b, float eps, bool layer_norm, float* out) {
  const int64_t r = blockIdx.x;
  const int64_t off = (r / per) * ld + (r % per) * n;
  __shared__ float red[32];
  const float* xr = x + off;
  float* orow = out + off;
  float mean = 0.f;
  if (layer_norm) {
    float s = 0.f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += xr[i];
    mean = block_sum(s, red) / float(n);
  }
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float d = xr[i] - mean;
    ss = fmaf(d, d, ss);
  }
  const float inv = 1.0f / sqrtf(block_sum(ss, red) / float(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float v = (xr[i] - mean) * inv * w[i];
    if (b) v += b[i];
    orow[i] = v;
  }
}

// Grid (token, head): rotate-half over the first rotary_dim values of each head.
__global__ void rope_rows_kernel(float* x, int64_t ld, int64_t D, int64_t half, const float* __restrict__ cos_t,
                                 const float* __restrict__ sin_t) {
  const int64_t t = blockIdx.x, h = blockIdx.y;
  float* head = x + t * ld + h * D;
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    const float c = cos_t[t * half + i], s = sin_t[t * half + i];
    const float a = head[i], bb = head[i + half];
    head[i] = a * c - bb * s;
    head[i + half] = bb * c + a * s;
  }
}

// Grid (token, kv head): k and v of the token into the cache at position pos0 + t.
__global__ void kv_append_kernel(const float* __restrict__ qkv, int64_t ld, int64_t k_off, int64_t v_off, int64_t D,
                                 float* __restrict__ kc, float* __restrict__ vc, int64_t capacity, int64_t pos0,
                                 const int64_t* __restrict__ pos0_dev) {
  const int64_t t = blockIdx.x, h = blockIdx.y;
  if (pos0_dev) pos0 = *pos0_dev;
  const float* k = qkv + t * ld + k_off + h * D;
  const float* v = qkv + t * ld + v_off + h * D;
  float* kd = kc + (h * capacity + pos0 + t) * D;
  float* vd = vc + (h * capacity + pos0 + t) * D;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    kd[i] = k[i];
    vd[i] = v[i];
  }
}

template <int Act, bool Gated>
__global__ void mlp_act_kernel(const float* __restrict__ up, int64_t tokens, int64_t U, int64_t F,
                               float* __restrict__ out) {
  const int64_t n = tokens * F;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / F, j = i % F;
    const float g = act1<Act>(up[t * U + j]);
    out[i] = Gated ? g * up[t * U + F + j] : g;
  }
}

__global__ void add_bias_kernel(float* y, int64_t rows, int64_t cols, int64_t ld, const float* __restrict__ b) {
  const int64_t n = rows * cols;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[(i / cols) * ld + i % cols] += b[i % cols];
}

__global__ void residual_kernel(float* x, const float* __restrict__ y, int64_t n, float scale) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] += scale == 1.0f ? y[i] : y[i] * scale;
}

__global__ void logits_kernel(float* l, int64_t n, float scale, float softcap) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v = l[i];
    if (scale != 1.0f) v *= scale;
    if (softcap > 0.f) v = tanhf(v / softcap) * softcap;
    l[i] = v;
  }
}

unsigned grid_for(int64_t n, int threads) {
  const int64_t want = (n + threads - 1) / threads;
  return unsigned(want < 65535 ? want : 65535);  // grid-stride beyond that
}

}  // namespace

void norm_rows(const float* x, int64_t ld, int64_t rows, int64_t per, int64_t n, const float* w, const float* b,
               float eps, bool layer_norm, float* out, Stream s) {
  require(rows >= 1 && per >= 1 && rows % per == 0 && n >= 1 && ld >= per * n, "x", "bad norm shape");
  require(x && w && out, "x", "null device pointer");
  norm_kernel<<<unsigned(rows), kNormThreads, 0, s>>>(x, ld, per, n, w, b, eps, layer_norm, out);
  check_launch("norm_rows");
}

void rope_rows(float* x, int64_t tokens, int64_t ld, int64_t heads, int64_t D, int64_t rotary_dim,
               const float* cos_t, const float* sin_t, Stream s) {
  require(tokens >= 1 && heads >= 1 && rotary_dim >= 2 && rotary_dim % 2 == 0 && rotary_dim <= D &&
              ld >= heads * D && heads < 65536,
          "x", "bad rope shape");
  rope_rows_kernel<<<dim3(unsigned(tokens), unsigned(heads)), 64, 0, s>>>(x, ld, D, rotary_dim / 2, cos_t, sin_t);
  check_launch("rope_rows");
}

void kv_append(const float* qkv, int64_t tokens, int64_t ld, int64_t k_off, int64_t v_off, int64_t kv_heads,
               int64_t D, float* k_cache, float* v_cache, int64_t capacity, int64_t pos0, Stream s,
               const int64_t* pos0_dev) {
  require(tokens >= 1 && kv_heads >= 1 && kv_heads < 65536 && pos0 >= 0 && pos0 + tokens <= capacity, "kv",
          "the new positions must fit the cache");
  kv_append_kernel<<<dim3(unsigned(tokens), unsigned(kv_heads)), 128, 0, s>>>(qkv, ld, k_off, v_off, D, k_cache,
                                                                              v_cache, capacity, pos0, pos0_dev);
  check_launch("kv_append");
}

void mlp_activation(int act, bool gated, const float* up, int64_t tokens, int64_t U, int64_t F, float* out,
                    Stream s) {
  require(act >= int(Activation::Silu) && act <= int(Activation::Relu), "act", "expected an Activation value (0..3)");
  require(tokens >= 1 && F >= 1 && U >= (gated ? 2 : 1) * F, "up", "bad MLP shape");
  constexpr int kThreads = 256;
  const unsigned g = grid_for(tokens * F, kThreads);
#define LLMOS_MLP_ACT(A)                                                                                      \
  case int(A):                                                                                                \
    if (gated) mlp_act_kernel<int(A), true><<<g, kThreads, 0, s>>>(up, tokens, U, F, out);                  \
    else mlp_act_kernel<int(A), false><<<g, kThreads, 0, s>>>(up, tokens, U, F, out);                       \
    break;
  switch (act) {
    LLMOS_MLP_ACT(Activation::Silu)
    LLMOS_MLP_ACT(Activation::GeluErf)
    LLMOS_MLP_ACT(Activation::GeluTanh)
    default:
      LLMOS_MLP_ACT(Activation::Relu)
  }
#undef LLMOS_MLP_ACT
  check_launch("mlp_activation");
}

void add_bias(float* y, int64_t rows, int64_t cols, int64_t ld, const float* b, Stream s) {
  require(rows >= 1 && cols >= 1 && ld >= cols && y && b, "bias", "bad bias shape");
  add_bias_kernel<<<grid_for(rows * cols, 256), 256, 0, s>>>(y, rows, cols, ld, b);
  check_launch("add_bias");
}

void add_residual(float* x, const float* y, int64_t n, float scale, Stream s) {
  require(n >= 1 && x && y, "x", "bad residual shape");
  residual_kernel<<<grid_for(n, 256), 256, 0, s>>>(x, y, n, scale);
  check_launch("add_residual");
}

void finish_logits(float* logits, int64_t n, float scale, float softcap, Stream s) {
  if (scale == 1.0f && softcap <= 0.f) return;
  require(n >= 1 && logits, "logits", "bad logits shape");
  logits_kernel<<<grid_for(n, 256), 256, 0, s>>>(logits, n, scale, softcap);
  check_launch("finish_logits");
}

}  // namespace llmos::cuda

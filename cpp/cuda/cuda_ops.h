// The CUDA device of the core: device queries, device memory and the kernels of the forward
// pass and of sampling, each the GPU twin of a CPU op (kernels/kernels.h, kernels/ops.h,
// sampling/warpers.cc). Plain C++: no CUDA header is needed to include it, so the bindings
// (compiled by the host compiler) call it; only cpp/cuda/*.cu include cuda_runtime.h.
//
// Every op takes device pointers and a stream (nullptr: the default stream) and only
// launches: the caller synchronizes. Shapes are checked on the host and refused with
// Error(InvalidInput) naming the argument; a CUDA failure becomes Error(InvalidInput) with
// field "device" and CUDA's own message (the core's errors have no device kind of their own).
//
// Compiled only when the build has CUDA (LLMOS_CUDA, CMakeLists.txt). The CUDA runtime is
// linked statically and loads the driver (libcuda.so.1) on the first call, so a build with
// CUDA still imports on a machine without a GPU or a driver: device_count() is 0 there.
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "quant/qformat.h"

struct CUstream_st;     // cudaStream_t is CUstream_st* (cuda_runtime_api.h)
struct CUgraphExec_st;  // cudaGraphExec_t

namespace llmos::cuda {

using Stream = CUstream_st*;
using GraphExec = CUgraphExec_st*;

// ---- devices (device.cu) ----------------------------------------------------------------

// GPUs the driver shows this process; 0 (never an error) without a driver or a GPU.
int device_count();
// Why device `index` cannot be used ("" when it can): no driver, a driver older than the
// runtime, no GPU, or fewer GPUs than index + 1. For the Python side's error messages.
std::string device_unavailable_reason(int index);

struct DeviceInfo {
  std::string name;
  int major = 0, minor = 0;        // compute capability
  int sm_count = 0;
  int64_t total_memory = 0;        // bytes
  int memory_clock_khz = 0;        // peak memory clock
  int bus_width_bits = 0;
  double peak_bandwidth_gbs = 0;   // 2 (DDR) * clock * bus width / 8: the HBM/GDDR roofline
};
DeviceInfo device_info(int index);  // throws InvalidInput (field "device") when unusable
void set_device(int index);

// Device memory, owned (cudaMalloc / cudaFree). Movable, not copyable.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; o.bytes_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* data() const { return p_; }
  template <class T> T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return bytes_; }
 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

void copy_to_device(void* dst, const void* src, size_t bytes);
void copy_to_host(void* dst, const void* src, size_t bytes);
void copy_on_device(void* dst, const void* src, size_t bytes);
void synchronize();  // waits for the device; throws what an earlier launch left behind

// ---- streams and graphs (device.cu) -------------------------------------------------------

// A stream ordered with the legacy default stream (the synchronous copies above), so work on
// it and those copies never overtake each other.
Stream stream_create();
void stream_destroy(Stream s);  // never throws
void stream_synchronize(Stream s);
// Records the launches this thread makes on s until capture_end, which returns them as one
// instantiated graph (replayed by graph_launch with a single launch); capture_abort ends a
// capture that failed half-way and discards it. Nothing but kernel launches on s may happen
// in between (no copies, no allocation).
void capture_begin(Stream s);
GraphExec capture_end(Stream s);
void capture_abort(Stream s);  // never throws
void graph_launch(GraphExec g, Stream s);
void graph_destroy(GraphExec g);  // never throws

// ---- matrix-vector products for decode (gemv_quant.cu, gemv_half.cu) ----------------------

// y[t * ldy + r] = x[t] . W[r] for t < m (1..kMaxGemvTokens), every row r of W.
constexpr int64_t kMaxGemvTokens = 16;

// W block-quantized (quant/qformat.h: every QuantType; codes, scales and mins on the device),
// dequantized in registers from 16-byte loads; x float32 [m, w.cols] on the device. One warp
// per row; x is not quantized (the CPU path quantizes it to int8), so the reference is
// x @ dequantize(W)^T.
void gemv_quant(const QView& w, const float* x, int64_t m, float* y, int64_t ldy, Stream s);

// W float16 or bfloat16 [rows, cols] (raw bits), x float32 [m, cols].
void gemv_half(DType wtype, const uint16_t* w, int64_t rows, int64_t cols, const float* x, int64_t m,
               float* y, int64_t ldy, Stream s);

// W float32 [rows, cols], x float32 [m, cols] (checkpoints kept in float32).
void gemv_float(const float* w, int64_t rows, int64_t cols, const float* x, int64_t m, float* y, int64_t ldy,
                Stream s);

// ---- element-wise and row-wise ops (norm.cu, rope.cu, activation.cu) ----------------------

// out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w for rows r < rows, n values each (norm_row's
// RMSNorm). out may alias x.
void rms_norm(const float* x, const float* w, float eps, int64_t rows, int64_t n, float* out, Stream s);

// Rotates the first rotary_dim values of every head of every token in place (rope_head's
// rotate-half layout): x [tokens, heads, head_dim], cos_t / sin_t [tokens, rotary_dim / 2]
// (the same tables rope_head takes, one row per token).
void rope(float* x, int64_t tokens, int64_t heads, int64_t head_dim, int64_t rotary_dim, const float* cos_t,
          const float* sin_t, Stream s);

// out[i] = act(gate[i]) * up[i], i < n (activate_gated; act is model/arch.h's Activation as int).
void activate_gated(int act, const float* gate, const float* up, float* out, int64_t n, Stream s);

// ---- the forward pass's steps over stacked tokens (forward_ops.cu; model/decoder_cuda.cc) ---

// RMSNorm (or LayerNorm with mean and optional bias b) of `rows` rows of n values, kernels/ops.cc's
// norm_row: row r is x + (r / per) * ld + (r % per) * n, so per > 1 norms each of `per` heads
// inside a strided row (qk_norm). out has x's layout and may alias it.
void norm_rows(const float* x, int64_t ld, int64_t rows, int64_t per, int64_t n, const float* w, const float* b,
               float eps, bool layer_norm, float* out, Stream s);
// rope_head on every head h < heads of every token t of x + t * ld (heads of D values), with
// the tables cos_t / sin_t [tokens, rotary_dim / 2], in place.
void rope_rows(float* x, int64_t tokens, int64_t ld, int64_t heads, int64_t D, int64_t rotary_dim,
               const float* cos_t, const float* sin_t, Stream s);
// k (at k_off) and v (at v_off) of each token's row of qkv [tokens, ld] into the caches
// [kv_heads, capacity, D] at positions pos0 + t; pos0 is read on the device from *pos0_dev
// when that is set (a captured graph; the caller checks it fits).
void kv_append(const float* qkv, int64_t tokens, int64_t ld, int64_t k_off, int64_t v_off, int64_t kv_heads,
               int64_t D, float* k_cache, float* v_cache, int64_t capacity, int64_t pos0, Stream s,
               const int64_t* pos0_dev = nullptr);
// out[t, j] = act(up[t, j]) * up[t, F + j] (gated) or act(up[t, j]), j < F; up [tokens, U].
void mlp_activation(int act, bool gated, const float* up, int64_t tokens, int64_t U, int64_t F, float* out,
                    Stream s);
// y[r, c] += b[c] for r < rows, c < cols (rows ld apart).
void add_bias(float* y, int64_t rows, int64_t cols, int64_t ld, const float* b, Stream s);
// x[i] += scale * y[i], i < n.
void add_residual(float* x, const float* y, int64_t n, float scale, Stream s);
// logits times scale, then softcap * tanh(l / softcap) when softcap > 0 (no launch when neither).
void finish_logits(float* logits, int64_t n, float scale, float softcap, Stream s);

// ---- attention for one decode token (attention_decode.cu) ---------------------------------

// Split-K flash-decoding: one new query per head against a contiguous cache of `len` keys.
// q [heads, D]; k, v [kv_heads, capacity, D] (the CPU Session's layout, float32); the query
// sits at position len - 1 and sees keys j with j > len - 1 - window (window 0: all).
// heads a multiple of kv_heads (GQA: head h reads kv head h / (heads / kv_heads)); D <= 256.
// Each split of the keys keeps a running max, sum and weighted V; a second kernel merges them.
struct DecodeAttention {
  const float* q;
  const float* k;
  const float* v;
  int64_t heads, kv_heads, D, len, capacity, window;
  float scale, softcap;  // softcap > 0: s = softcap * tanh(s / softcap)
  float* out;            // [heads, D]
  // Set: the number of keys is read on the device from *len_dev when the kernels run (a
  // captured graph replayed at every position), and `len` is only its upper bound (the grid
  // and the workspace are sized for it). The splits follow the device's len exactly as they
  // follow `len` otherwise, so both give the same result.
  const int64_t* len_dev = nullptr;
};
constexpr int64_t kMaxAttentionHeadDim = 256;
// Splits used for `len` keys, and the float32 workspace the call needs.
int64_t attention_splits(int64_t len);
int64_t attention_workspace_floats(int64_t heads, int64_t D, int64_t len);
void attention_decode(const DecodeAttention& a, float* workspace, Stream s);

// ---- sampling (sampling.cu) --------------------------------------------------------------

// The warpers of sampling/warpers.cc that decide most sampling, on the device, one block
// per row of logits [rows, vocab]: temperature, then top-k (ties with the k-th kept), top-p
// (a token is dropped when the mass above it is >= top_p; tokens tied at the edge are all
// kept, where the CPU keeps the lower ids first), then min-p; then one draw from the kept
// softmax with a counter-based RNG of (seed, row, step), or the argmax when greedy
// (ties: the lowest id, as the CPU's argmax).
struct SampleParams {
  bool greedy = true;
  float temperature = 1.0f;
  int64_t top_k = 0;       // 0: off
  float top_p = 1.0f;      // 1: off
  float min_p = 0.0f;      // 0: off
  uint64_t seed = 0, step = 0;
};
// tokens [rows] int32; probs (optional, may be null) [rows, vocab]: the distribution drawn
// from (0 for dropped tokens), for tests.
void sample(const float* logits, int64_t rows, int64_t vocab, const SampleParams& p, int32_t* tokens,
            float* probs, Stream s);

// ---- timings (bench.cu) ------------------------------------------------------------------

// Seconds per launch of gemv_quant / gemv_half on a [rows, cols] matrix and m tokens,
// averaged over reps launches that rotate through copies of the weights larger than L2
// (so each reads its matrix from memory). The values are a fixed pattern: speed only.
double time_gemv_quant(QuantType type, int64_t group, int64_t rows, int64_t cols, int64_t m, int reps);
double time_gemv_half(DType type, int64_t rows, int64_t cols, int64_t m, int reps);

}  // namespace llmos::cuda

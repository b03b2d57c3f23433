// The decoder's forward pass on a GPU: the same steps as Model::forward_locked (decoder.cc),
// run on the CUDA ops of cuda/cuda_ops.h over weights copied to the device in the format they
// have on the host (float32, float16, bfloat16 or llmos's quantized blocks), with each
// session's KV cache in device memory. Model::to_device makes one; Model::forward then runs
// here, so the decode loops (generate.cc, beam search) and everything above them work as on
// the CPU, with the logits copied back to the host for sampling.
//
// What runs: the dense families with RMSNorm or LayerNorm, RoPE (default, linear, llama3,
// yarn: any scaling folded into inv_freq), NoPE layers, a local rope for sliding layers,
// sliding windows, q/k norm, biases, soft caps, post norms, Granite's scales. What does not,
// refused by unsupported() with the reason: mixture of experts, attention sinks, learned
// positions, dynamic NTK and longrope (their keys depend on the sequence length), and the
// serving engine's paged KV cache. The embedding rows and the rope tables are made on the host
// (they are small) and copied up per forward; the matrices' products use the GEMV kernels in
// runs of up to 16 tokens, and attention the split-K decode kernel once per query.
//
// A one-token step (decode) runs as a CUDA graph: the first step of a session captures its
// ~13 launches per layer once, with the position read on the device, and every later step is
// one graph launch after copying the step's inputs up; the cache growing (or the decoder's
// buffers being reallocated) makes the next step capture again. LLMOS_CUDA_GRAPHS=0 turns
// this off (each op launched as it comes, as for prompts); both give the same result.
//
// Without CUDA in the build, constructing one throws (cuda/no_cuda.cc).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/cancel.h"
#include "cuda/cuda_ops.h"
#include "model/arch.h"
#include "model/weights.h"

namespace llmos {

class Session;
struct SeqChunk;

// One session's keys and values on the device: per layer [num_kv_heads, capacity, head_dim];
// and the captured decode step that reads and writes them (replayed at every position until
// the cache or the decoder's buffers move).
struct CudaKv {
  CudaKv() = default;
  ~CudaKv() { cuda::graph_destroy(step); }
  CudaKv(const CudaKv&) = delete;
  CudaKv& operator=(const CudaKv&) = delete;
  std::vector<cuda::DeviceBuffer> k, v;
  int64_t capacity = 0;
  cuda::GraphExec step = nullptr;
  // What the step was captured with: the cache's first buffer and capacity, the decoder's
  // buffer generation.
  const void* step_k0 = nullptr;
  int64_t step_capacity = 0;
  uint64_t step_buffers = 0;
};

class CudaDecoder {
 public:
  // Copies the weights to GPU `device`. Throws InvalidInput (field "device") when the GPU or
  // the model cannot be used (unsupported() says why), or the copy fails (out of memory).
  CudaDecoder(const Architecture& spec, const ModelWeights& w, int device);
  ~CudaDecoder();
  CudaDecoder(const CudaDecoder&) = delete;
  CudaDecoder& operator=(const CudaDecoder&) = delete;

  // Why this model cannot run on the GPU path ("" when it can).
  static std::string unsupported(const Architecture& spec);

  int device() const { return device_; }
  int64_t weight_bytes() const { return weight_bytes_; }

  // Model::forward's contract (validated chunks, contiguous sessions): appends each chunk's
  // tokens to its session's device cache and writes the logits to the host.
  void forward(const std::vector<SeqChunk>& chunks, float* logits, bool all_logits, CancelCheck* cancel);
  // dst's device cache becomes a copy of src's first n positions (Session::copy_from).
  void copy_cache(CudaKv& dst, const CudaKv& src, int64_t n) const;

 private:
  struct DMatrix {
    DType dtype = DType::F32;
    QuantType qtype = QuantType::None;
    int64_t rows = 0, cols = 0, group = 0;
    cuda::DeviceBuffer data, scale, min;
  };
  struct DLayer {
    cuda::DeviceBuffer attn_norm_w, attn_norm_b, qkv_b, q_norm_w, k_norm_w, o_b, attn_post_norm_w;
    cuda::DeviceBuffer ffn_norm_w, ffn_norm_b, up_b, down_b, ffn_post_norm_w;
    DMatrix qkv, o, up, down;
  };

  DMatrix upload(const Matrix& m);
  cuda::DeviceBuffer upload(const Vector& v);
  void matmul(const DMatrix& w, const float* x, int64_t n, const cuda::DeviceBuffer& bias, float* y);
  void norm(int64_t n, const float* x, const cuda::DeviceBuffer& w, const cuda::DeviceBuffer& b, float* out);
  void reserve(CudaKv& kv, int64_t n_past, int64_t n_total);
  void scratch(int64_t n);
  // One piece of n <= kPiece tokens of one sequence at positions pos0..: the layers, and
  // (logits non-null) the head on the last row or, all_logits, on every row.
  void piece(CudaKv& kv, const int32_t* tokens, int64_t n, int64_t pos0, float* logits, bool all_logits,
             CancelCheck* cancel);
  // The steps of a piece: its inputs copied up (embedding rows, rope tables, position), the
  // layers (pos_dev set: the position is read on the device, for a graph), the head on `rows`
  // rows ending at the piece's last.
  void upload_inputs(const int32_t* tokens, int64_t n, int64_t pos0);
  void layers(CudaKv& kv, int64_t n, int64_t pos0, const int64_t* pos_dev, CancelCheck* cancel);
  void head(int64_t n, int64_t rows);
  void decode_step(CudaKv& kv);  // layers + head of one token through the session's graph

  const Architecture& spec_;
  const ModelWeights& host_;  // the embedding rows are read on the host
  int device_;
  cuda::Stream stream_ = nullptr;
  bool graphs_ = true;        // LLMOS_CUDA_GRAPHS
  uint64_t buffers_ = 1;      // bumped whenever a buffer a graph reads moves
  int64_t weight_bytes_ = 0;
  std::vector<DLayer> layers_;
  cuda::DeviceBuffer final_norm_w_, final_norm_b_;
  DMatrix lm_head_;
  // Activations of one piece (float32): x, h [n, H], qkv [n, QKV], attn [n, Nq D], tmp [n, H],
  // up [n, U], act [n, F], logits [n, V]; the rope tables; attention's split workspace.
  int64_t scratch_tokens_ = 0;
  cuda::DeviceBuffer x_, h_, qkv_, attn_, tmp_, up_, act_, logits_, cos_, sin_, cos_local_, sin_local_;
  cuda::DeviceBuffer attn_ws_;
  cuda::DeviceBuffer pos_;  // int64 [2]: the step's position and its number of keys (graphs)
  int64_t attn_ws_len_ = 0;
  std::vector<float> host_rows_, host_cos_, host_sin_;
};

}  // namespace llmos

// The model's weights in the layout the decoder reads: matrices row-major [out, in] in
// the storage dtype (float32, bfloat16 or float16), vectors (norms, biases) in float32.
// Fused matrices (q|k|v, gate|up) are assembled at load from one or several checkpoint
// tensors, so each layer input is read once per matrix group.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "core/buffer.h"
#include "core/dtype.h"
#include "model/arch.h"
#include "quant/qformat.h"

namespace llmos {

// A weight matrix [rows, cols]: float (dtype, values in data) or block-quantized
// (qtype != None: codes in data, float16 scales and mins; see quant/qformat.h).
struct Matrix {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  Buffer data;
  QuantType qtype = QuantType::None;
  int64_t group = 0;
  Buffer scale, min;
  bool empty() const { return rows == 0; }
  bool quantized() const { return qtype != QuantType::None; }
  QView qview() const {
    return QView{qtype, rows, cols, group, data.data(), scale.as<uint16_t>(),
                 qtype == QuantType::Q4Asym ? min.as<uint16_t>() : nullptr};
  }
  // Row r as float32 (any storage).
  void row(int64_t r, float* dst) const;
};

// How to store the matrices: quantized layers use `type` with `group`; the embedding and
// LM head use `head_type` (Q6 when the layers are int4, as llama.cpp keeps its output
// matrix at higher precision). A matrix whose width does not fit the blocks stays float.
// Quantizing at load splits each matrix's rows over `n_threads` threads.
struct QuantSpec {
  QuantType type = QuantType::None;
  int64_t group = 32;
  QuantType head_type = QuantType::None;
  int n_threads = 1;
};

class ThreadPool;

// Quantizes a float32 matrix in place of its float data (rows split over `pool` if given).
void quantize_matrix(Matrix& m, QuantType type, int64_t group, ThreadPool* pool = nullptr);

using Vector = std::vector<float>;

struct LayerWeights {
  Vector attn_norm_w, attn_norm_b;
  Matrix qkv;          // [(num_heads + 2 num_kv_heads) * head_dim, hidden]
  Vector qkv_b;
  Vector q_norm_w, k_norm_w;  // [head_dim]
  Matrix o;            // [hidden, num_heads * head_dim]
  Vector o_b;
  Vector attn_post_norm_w;
  Vector ffn_norm_w, ffn_norm_b;
  Matrix up;           // gated: [2 * intermediate, hidden] = gate rows then up rows; else [intermediate, hidden]
  Vector up_b;
  Matrix down;         // [hidden, intermediate]
  Vector down_b;
  Vector ffn_post_norm_w;
  // Mixture of experts: router [num_experts, hidden] (kept in float), per expert gate|up
  // [2 * expert_intermediate, hidden] and down [hidden, expert_intermediate]; `up`/`down`
  // above then hold the shared expert, gated by shared_gate [1, hidden].
  Matrix router;
  Vector router_b;     // [num_experts] (router_bias)
  Matrix shared_gate;
  std::vector<Matrix> expert_up, expert_down;
  std::vector<Vector> expert_up_b, expert_down_b;  // (expert_bias)
  Vector sinks;        // [num_heads] (attn_sinks)
};

struct ModelWeights {
  Matrix embed;        // [vocab, hidden]
  Matrix pos_embed;    // [max_position_embeddings, hidden] (learned positions only)
  Vector final_norm_w, final_norm_b;
  Matrix lm_head;      // [vocab, hidden]; empty when tied to embed
  std::vector<LayerWeights> layers;

  const Matrix& output_matrix() const { return lm_head.empty() ? embed : lm_head; }
};

// A tensor in memory that the caller owns and keeps alive and unchanged while
// load_weights runs (a numpy array from Python): row-major, `shape` in elements.
struct HostTensor {
  const uint8_t* data = nullptr;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
};

// Where one role's data comes from: tensors stacked along the output rows, each read from a
// checkpoint file or, when `arrays` is not empty, from memory.
struct WeightPart {
  std::string path;     // .safetensors file; "" when the data is in `arrays`
  std::string tensor;   // tensor name inside the file; with `arrays`, a name for messages
  bool transpose = false;  // stored [in, out] (GPT-2's Conv1D)
  // The float tensor, or for a pre-quantized source its codes, scale and (Q4Asym) min.
  std::vector<HostTensor> arrays;
};

struct WeightSource {
  std::string role;     // "embed", "qkv.weight", ... (see weights.cc for the full list)
  int64_t layer = -1;   // -1 for model-wide roles
  std::vector<WeightPart> parts;
  // Already quantized (by llmos.quantize, or repacked from AWQ / GPTQ): one part whose
  // codes (U8 [rows, quant_row_bytes]), scale (F16 [rows, cols / group]) and, for Q4Asym,
  // min (F16, same shape) are copied as they are. In a file they are the tensors
  // <tensor>.codes, <tensor>.scale and <tensor>.min.
  QuantType prequant = QuantType::None;
  int64_t group = 0;
};

// Reads every role the spec needs from the listed tensors, converting to `dtype` (F32,
// BF16 or F16) for matrices. Throws Error(Tensor) naming file (if any) and tensor for a
// missing, misshapen or non-float tensor, and for a required role that has no source.
// Calls fn(role, layer, matrix) for every matrix the spec uses (for saving a quantized model).
void for_each_matrix(const Architecture& spec, const ModelWeights& w,
                     const std::function<void(const std::string&, int64_t, const Matrix&)>& fn);

ModelWeights load_weights(const Architecture& spec, const std::vector<WeightSource>& sources, DType dtype,
                          const QuantSpec& quant = QuantSpec());

class SourceFiles;

// load_weights one source at a time, so a caller can compute each source just before it is
// added and free it just after (the model then never exists twice in memory).
class WeightLoader {
 public:
  WeightLoader(const Architecture& spec, DType dtype, const QuantSpec& quant = QuantSpec());
  ~WeightLoader();
  void add(const WeightSource& src);
  // Throws Error(Tensor) for a role the spec needs that no source gave.
  ModelWeights finish();

 private:
  Architecture spec_;
  DType dtype_;
  QuantSpec quant_;
  std::unique_ptr<ThreadPool> pool_;     // quantizing at load, when n_threads > 1
  std::unique_ptr<SourceFiles> files_;   // each file opened once per load
  std::set<std::pair<std::string, int64_t>> seen_;
  ModelWeights w_;
};

}  // namespace llmos

// The model's weights in the layout the decoder reads: matrices row-major [out, in] in
// the storage dtype (float32, bfloat16 or float16), vectors (norms, biases) in float32.
// Fused matrices (q|k|v, gate|up) are assembled at load from one or several checkpoint
// tensors, so each layer input is read once per matrix group.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/buffer.h"
#include "core/dtype.h"
#include "model/arch.h"

namespace llmos {

struct Matrix {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  Buffer data;
  bool empty() const { return rows == 0; }
};

using Vector = std::vector<float>;

struct LayerWeights {
  Vector attn_norm_w, attn_norm_b;
  Matrix qkv;          // [(n_heads + 2 n_kv_heads) * head_dim, hidden]
  Vector qkv_b;
  Vector q_norm_w, k_norm_w;  // [head_dim]
  Matrix o;            // [hidden, n_heads * head_dim]
  Vector o_b;
  Vector attn_post_norm_w;
  Vector ffn_norm_w, ffn_norm_b;
  Matrix up;           // gated: [2 * intermediate, hidden] = gate rows then up rows; else [intermediate, hidden]
  Vector up_b;
  Matrix down;         // [hidden, intermediate]
  Vector down_b;
  Vector ffn_post_norm_w;
};

struct ModelWeights {
  Matrix embed;        // [vocab, hidden]
  Matrix pos_embed;    // [max_positions, hidden] (learned positions only)
  Vector final_norm_w, final_norm_b;
  Matrix lm_head;      // [vocab, hidden]; empty when tied to embed
  std::vector<LayerWeights> layers;

  const Matrix& output_matrix() const { return lm_head.empty() ? embed : lm_head; }
};

// Where one role's data comes from: checkpoint tensors stacked along the output rows.
struct WeightPart {
  std::string path;     // .safetensors file
  std::string tensor;   // tensor name inside it
  bool transpose = false;  // stored [in, out] (GPT-2's Conv1D)
};

struct WeightSource {
  std::string role;     // "embed", "qkv.weight", ... (see weights.cc for the full list)
  int64_t layer = -1;   // -1 for model-wide roles
  std::vector<WeightPart> parts;
};

// Reads every role the spec needs from the listed tensors, converting to `dtype` (F32,
// BF16 or F16) for matrices. Throws Error(Tensor) naming file and tensor for a missing,
// misshapen or non-float tensor, and for a required role that has no source.
ModelWeights load_weights(const ArchSpec& spec, const std::vector<WeightSource>& sources, DType dtype);

}  // namespace llmos

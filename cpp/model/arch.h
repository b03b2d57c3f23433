// The architecture description: every switch by which the supported decoder-only families
// differ. Python reads config.json into llmos.arch.families.Architecture (and rope.Rope),
// whose fields these are under the same names, and copies it here field by field; the
// decoder in model/decoder.cc reads nothing else. A new family is a new mapping in Python.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace llmos {

enum class NormKind { LayerNorm, RMSNorm };
enum class Activation { Silu, GeluErf, GeluTanh, Relu };

struct Rope {
  int64_t rotary_dim = 0;           // leading dims of each head that rotate; 0 = no RoPE
  std::vector<float> inv_freq;      // [rotary_dim / 2], scaling (linear, llama3, yarn...) applied
  // longrope: inv_freq_long replaces inv_freq in a forward whose sequence length exceeds
  // long_after (transformers switches per forward, with earlier keys left as they were).
  std::vector<float> inv_freq_long;
  int64_t long_after = 0;
  float attention_scaling = 1.0f;   // multiplies cos and sin (yarn, longrope)
  // Dynamic NTK: when the sequence grows past dynamic_max_positions, the base is stretched
  // for that forward, as transformers' dynamic_rope_update does.
  bool dynamic = false;
  double dynamic_base = 10000.0;
  double dynamic_factor = 1.0;
  int64_t dynamic_max_positions = 0;
};

struct Architecture {
  std::string family;               // for messages only
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t intermediate_size = 0;
  int64_t max_position_embeddings = 0;  // the context length the model accepts

  NormKind norm = NormKind::RMSNorm;
  float norm_eps = 1e-6f;
  float norm_weight_offset = 0.0f;  // Gemma stores w and scales by (1 + w)
  bool norm_bias = false;           // LayerNorm with bias (GPT-2)

  bool learned_positions = false;   // GPT-2: absolute position embedding table
  Rope rope;
  // Gemma 3: the sliding-window layers rotate with their own base (rope_local_base_freq);
  // rotary_dim 0 = every layer uses `rope`.
  Rope rope_local;
  // SmolLM3: per layer, 1 = rotate q and k, 0 = no RoPE (NoPE layer); empty = every layer rotates.
  std::vector<uint8_t> rope_layers;

  bool qkv_bias = false;
  bool o_bias = false;
  bool qk_norm = false;             // Qwen3: RMSNorm over head_dim on q and k before RoPE
  bool qk_norm_across_heads = false;// OLMo 2: the q (k) norm spans all heads' q (k) at once
  bool pre_norm = true;             // norm before attention and MLP; OLMo 2 has only the post norms
  bool gated_mlp = true;            // act(gate) * up  vs  act(up)
  // Mixture of experts (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE): every layer's MLP is
  // experts_per_token of num_experts gated MLPs of expert_intermediate_size, weighted by the
  // router's softmax over all experts (top-k renormalised to sum 1 when norm_topk_prob), plus a
  // shared expert of shared_expert_size when > 0 (the layer's up/down; Qwen2-MoE), scaled by
  // sigmoid(shared_gate . x) when shared_expert_gate. num_experts 0 = a dense MLP.
  int64_t num_experts = 0;
  int64_t experts_per_token = 0;
  int64_t expert_intermediate_size = 0;
  bool norm_topk_prob = false;
  int64_t shared_expert_size = 0;
  bool shared_expert_gate = false;
  bool mlp_bias = false;
  // gpt-oss: the router adds a bias, each expert's gate|up and down add biases, and the experts'
  // gated activation is (clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g) with
  // g = min(gate, limit) when swiglu_limit > 0 (in place of `activation`).
  bool router_bias = false;
  bool expert_bias = false;
  float swiglu_limit = 0.0f;
  float swiglu_alpha = 1.0f;
  Activation activation = Activation::Silu;
  bool post_attn_norm = false;      // Gemma 2: norm on the attention output before the residual add
  bool post_ffn_norm = false;       // Gemma 2: norm on the MLP output before the residual add

  bool tie_word_embeddings = false; // lm_head shares the embedding matrix
  float embed_scale = 1.0f;         // Gemma: sqrt(hidden_size)
  float attn_scale = 0.0f;          // multiplies q.k; 0 means 1/sqrt(head_dim)
  float attn_softcap = 0.0f;        // Gemma 2: cap * tanh(score / cap); 0 = off
  // gpt-oss: a learned logit per layer and query head (weight "sinks" [num_heads]) joins every
  // query's softmax denominator and attends to nothing.
  bool attn_sinks = false;
  float final_softcap = 0.0f;       // Gemma 2: on the logits; 0 = off
  float residual_scale = 1.0f;      // Granite: each block's output times this before the residual add
  float logit_scale = 1.0f;         // Granite: logits times this (1 / logits_scaling)
  std::vector<int64_t> sliding_window;  // [num_layers]; 0 = full attention, W = attend to the last W keys

  // Throws InvalidInput naming the field when the description is inconsistent.
  void validate() const;
  // The width of the layer's own (dense or shared-expert) MLP; 0 when it has none.
  int64_t mlp_width() const { return num_experts ? shared_expert_size : intermediate_size; }
};

}  // namespace llmos

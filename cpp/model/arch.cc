#include "model/arch.h"

#include <cmath>
#include <utility>

#include "core/errors.h"

namespace llmos {

namespace {
void require(bool ok, const char* field, const std::string& what) {
  if (!ok) throw Error(Error::Kind::InvalidInput, "", field, what);
}

// A caller of the core (not only llmos.load, which checks the config against the checkpoint's
// tensors first) may pass any numbers: each dimension is bounded, and every product the loader
// and the decoder form from them fits int64 and size_t with room to spare, so that no
// size computation wraps into a small allocation that is then overrun.
constexpr int64_t kMaxDim = int64_t(1) << 31;
constexpr int64_t kMaxLayers = int64_t(1) << 16;
constexpr int64_t kMaxElements = int64_t(1) << 40;  // of one weight matrix

void require_dim(int64_t v, const char* field) {
  require(v > 0 && v <= kMaxDim, field, "must be in [1, " + std::to_string(kMaxDim) + "], got " + std::to_string(v));
}

void require_product(int64_t a, int64_t b, const char* field, const std::string& what) {
  int64_t p = 0;
  require(!__builtin_mul_overflow(a, b, &p) && p <= kMaxElements, field,
          what + " would have " + std::to_string(a) + " x " + std::to_string(b) + " elements, more than " +
              std::to_string(kMaxElements));
}
}  // namespace

void Architecture::validate() const {
  require_dim(vocab_size, "vocab_size");
  require_dim(hidden_size, "hidden_size");
  require(num_layers > 0 && num_layers <= kMaxLayers, "num_hidden_layers",
          "must be in [1, " + std::to_string(kMaxLayers) + "], got " + std::to_string(num_layers));
  require_dim(num_heads, "num_attention_heads");
  require_dim(num_kv_heads, "num_key_value_heads");
  require_dim(head_dim, "head_dim");
  require_dim(intermediate_size, "intermediate_size");
  require_product(vocab_size, hidden_size, "vocab_size", "the embedding");
  require_product(num_heads + 2 * num_kv_heads, head_dim, "head_dim", "a head's q, k and v rows");
  require_product((num_heads + 2 * num_kv_heads) * head_dim, hidden_size, "hidden_size", "the qkv matrix");
  require_product(2 * intermediate_size, hidden_size, "intermediate_size", "the MLP matrix");
  if (learned_positions) require_product(max_position_embeddings, hidden_size, "max_position_embeddings",
                                         "the position table");
  require(num_heads % num_kv_heads == 0, "num_key_value_heads",
          "must divide num_attention_heads (" + std::to_string(num_heads) + "), got " +
              std::to_string(num_kv_heads));
  require(max_position_embeddings > 0, "max_position_embeddings", "must be > 0");
  require(rope.rotary_dim >= 0 && rope.rotary_dim <= head_dim && rope.rotary_dim % 2 == 0, "rotary_dim",
          "must be even and within [0, head_dim]");
  require(rope.rotary_dim == 0 || int64_t(rope.inv_freq.size()) == rope.rotary_dim / 2, "inv_freq",
          "needs rotary_dim / 2 entries");
  require(rope.inv_freq_long.empty() || rope.inv_freq_long.size() == rope.inv_freq.size(), "inv_freq_long",
          "needs rotary_dim / 2 entries");
  require(!(rope.dynamic && rope.rotary_dim <= 2), "rope_scaling", "dynamic RoPE needs rotary_dim > 2");
  require(rope_local.rotary_dim == 0 ||
              (rope_local.rotary_dim == rope.rotary_dim && int64_t(rope_local.inv_freq.size()) == rope.rotary_dim / 2 &&
               rope_local.inv_freq_long.empty() && !rope_local.dynamic),
          "rope_local", "must rotate the same dims as rope, without longrope or dynamic scaling");
  require(rope_layers.empty() || int64_t(rope_layers.size()) == num_layers, "rope_layers",
          "needs one entry per layer (or none)");
  require(int64_t(sliding_window.size()) == num_layers, "sliding_window", "needs one entry per layer");
  if (num_experts) {
    require(num_experts > 0 && num_experts <= 4096, "num_experts", "must be in [0, 4096]");
    require(experts_per_token > 0 && experts_per_token <= num_experts, "num_experts_per_tok",
            "must be in [1, num_experts]");
    require_dim(expert_intermediate_size, "moe_intermediate_size");
    require_product(2 * expert_intermediate_size, hidden_size, "moe_intermediate_size", "an expert's MLP matrix");
    require(shared_expert_size >= 0 && shared_expert_size <= kMaxDim, "shared_expert_intermediate_size",
            "must be in [0, " + std::to_string(kMaxDim) + "]");
    require(gated_mlp, "hidden_act", "experts are gated MLPs");
    require(!shared_expert_gate || shared_expert_size > 0, "shared_expert_gate", "needs a shared expert");
  }
  require(swiglu_limit >= 0 && std::isfinite(swiglu_limit), "swiglu_limit", "must be a finite number >= 0");
  require(std::isfinite(swiglu_alpha), "swiglu_alpha", "must be finite");
  require(swiglu_limit == 0 || num_experts > 0, "swiglu_limit", "applies to experts only");
  for (int64_t w : sliding_window) require(w >= 0, "sliding_window", "must be >= 0");
  require(norm_eps > 0 && std::isfinite(norm_eps), "norm_eps", "must be a finite number > 0");
  // NaN or infinite scales make every logit NaN: refused here rather than found at decode time.
  for (const auto& [v, field] : {std::pair{embed_scale, "embed_scale"}, {attn_scale, "attn_scale"},
                                 {attn_softcap, "attn_softcap"}, {final_softcap, "final_softcap"},
                                 {norm_weight_offset, "norm_weight_offset"}, {residual_scale, "residual_scale"},
                                 {logit_scale, "logit_scale"}, {rope_local.attention_scaling, "attention_scaling"},
                                 {rope.attention_scaling, "attention_scaling"}})
    require(std::isfinite(v), field, "must be finite");
  for (float f : rope.inv_freq) require(std::isfinite(f), "inv_freq", "must be finite");
  for (float f : rope.inv_freq_long) require(std::isfinite(f), "inv_freq_long", "must be finite");
  for (float f : rope_local.inv_freq) require(std::isfinite(f), "inv_freq", "must be finite");
}

}  // namespace llmos

#include "model/arch.h"

#include "core/errors.h"

namespace llmos {

namespace {
void require(bool ok, const char* field, const std::string& what) {
  if (!ok) throw Error(Error::Kind::InvalidInput, "", field, what);
}
}  // namespace

void Architecture::validate() const {
  require(vocab_size > 0, "vocab_size", "must be > 0");
  require(hidden_size > 0, "hidden_size", "must be > 0");
  require(num_layers > 0, "num_hidden_layers", "must be > 0");
  require(num_heads > 0, "num_attention_heads", "must be > 0");
  require(num_kv_heads > 0 && num_heads % num_kv_heads == 0, "num_key_value_heads",
          "must be > 0 and divide num_attention_heads (" + std::to_string(num_heads) + "), got " +
              std::to_string(num_kv_heads));
  require(head_dim > 0, "head_dim", "must be > 0");
  require(intermediate_size > 0, "intermediate_size", "must be > 0");
  require(max_position_embeddings > 0, "max_position_embeddings", "must be > 0");
  require(rope.rotary_dim >= 0 && rope.rotary_dim <= head_dim && rope.rotary_dim % 2 == 0, "rotary_dim",
          "must be even and within [0, head_dim]");
  require(rope.rotary_dim == 0 || int64_t(rope.inv_freq.size()) == rope.rotary_dim / 2, "inv_freq",
          "needs rotary_dim / 2 entries");
  require(rope.inv_freq_long.empty() || rope.inv_freq_long.size() == rope.inv_freq.size(), "inv_freq_long",
          "needs rotary_dim / 2 entries");
  require(!(rope.dynamic && rope.rotary_dim <= 2), "rope_scaling", "dynamic RoPE needs rotary_dim > 2");
  require(int64_t(sliding_window.size()) == num_layers, "sliding_window", "needs one entry per layer");
  for (int64_t w : sliding_window) require(w >= 0, "sliding_window", "must be >= 0");
  require(norm_eps > 0, "norm_eps", "must be > 0");
}

}  // namespace llmos

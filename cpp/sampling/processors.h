// Logits processors with transformers' semantics, applied in transformers' order (every
// decoding mode). Each works in place on one row of scores [vocab]; a banned token gets -inf.
// The warpers (sampling only) are in warpers.h.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "sampling/options.h"

namespace llmos {

// One sequence's tokens (prompt + generated), kept in the forms the processors need.
class TokenHistory {
 public:
  TokenHistory(const std::vector<int32_t>& prompt, int64_t vocab_size);
  void push(int32_t token);
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int64_t prompt_len() const { return prompt_len_; }
  int64_t n_generated() const { return int64_t(tokens_.size()) - prompt_len_; }
  const std::vector<int32_t>& seen() const { return seen_list_; }             // distinct ids so far
  const std::vector<int32_t>& prompt_distinct() const { return prompt_list_; } // distinct ids of the prompt
  const std::unordered_map<int32_t, int32_t>& generated() const { return generated_; }

 private:
  std::vector<int32_t> tokens_;
  int64_t prompt_len_;
  std::vector<uint8_t> seen_;                      // [vocab]: occurs anywhere in tokens_
  std::vector<int32_t> seen_list_;                 // the ids with seen_ set
  std::vector<int32_t> prompt_list_;
  std::unordered_map<int32_t, int32_t> generated_; // id -> times generated
};

// Biases, penalties, bans and forced tokens, in transformers' order.
void apply_processors(const DecodeOptions& o, const TokenHistory& h, float* scores, int64_t vocab);

// log(sum(exp(scores))) over the finite entries.
float log_sum_exp(const float* scores, int64_t vocab);

}  // namespace llmos

// Logits processors and warpers with transformers' semantics, in transformers' order.
// Each works in place on one row of scores [vocab]; a removed token gets -inf.
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

 private:
  friend void apply_processors(const DecodeOptions&, const TokenHistory&, float*, int64_t);
  std::vector<int32_t> tokens_;
  int64_t prompt_len_;
  std::vector<uint8_t> seen_;                      // [vocab]: occurs anywhere in tokens_
  std::vector<int32_t> seen_list_;                 // the ids with seen_ set
  std::unordered_map<int32_t, int32_t> generated_; // id -> times generated
};

// Penalties, biases and bans (every decoding mode).
void apply_processors(const DecodeOptions& o, const TokenHistory& h, float* scores, int64_t vocab);

// Temperature, top-k, top-p, min-p, typical (sampling only). At least min_keep tokens
// survive each filter (transformers: 1, or n_eos + 1 for beam sampling).
void apply_warpers(const DecodeOptions& o, float* scores, int64_t vocab, int64_t min_keep);

// log(sum(exp(scores))) over the finite entries.
float log_sum_exp(const float* scores, int64_t vocab);

}  // namespace llmos

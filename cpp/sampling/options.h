// Every option that shapes how the next token is chosen, with transformers' names and
// meanings (plus the OpenAI API's penalties and logit bias). Python fills one from
// llmos.GenerationConfig; validate() rejects what transformers would reject.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace llmos {

struct DecodeOptions {
  int64_t max_new_tokens = 16;
  int64_t min_new_tokens = 0;
  int64_t min_length = 0;             // total length, prompt included
  std::vector<int32_t> eos_token_ids;

  // Logits processors, applied in this order (transformers' order; logit_bias stands where
  // transformers' sequence_bias does, presence/frequency right after the repetition penalty).
  std::vector<std::pair<int32_t, float>> logit_bias;
  float repetition_penalty = 1.0f;    // > 0; 1 = off
  float presence_penalty = 0.0f;      // OpenAI: minus this once a token was generated
  float frequency_penalty = 0.0f;     // OpenAI: minus this per time a token was generated
  int64_t no_repeat_ngram_size = 0;
  std::vector<std::vector<int32_t>> bad_words_ids;

  // Warpers, when sampling: temperature -> top-k -> top-p -> min-p -> typical.
  bool do_sample = false;
  float temperature = 1.0f;
  int64_t top_k = 0;                  // 0 = off
  float top_p = 1.0f;                 // 1 = off
  float min_p = 0.0f;                 // 0 = off
  float typical_p = 1.0f;             // 1 = off
  uint64_t seed = 0;

  // Beam search.
  int64_t num_beams = 1;
  float length_penalty = 1.0f;
  int early_stopping = 0;             // 0 = False, 1 = True, 2 = "never"
  int64_t num_return_sequences = 1;

  // Logprobs of the chosen tokens (log_softmax of the processed scores) and of the
  // top_logprobs best alternatives.
  bool logprobs = false;
  int64_t top_logprobs = 0;

  // Throws InvalidInput naming the option; vocab_size bounds every token id.
  void validate(int64_t vocab_size) const;
};

}  // namespace llmos

// Every option that shapes how the next token is chosen, with transformers' names and
// meanings (plus the OpenAI API's penalties and logit bias). Python fills one from
// llmos.GenerationConfig; validate() rejects what transformers would reject.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace llmos {

struct DecodeOptions {
  int64_t max_new_tokens = 16;        // max_length - prompt length: where forced EOS lands
  int64_t min_new_tokens = 0;
  int64_t min_length = 0;             // total length, prompt included
  std::vector<int32_t> eos_token_ids;

  // Logits processors, in transformers' order (cpp/sampling/processors.cc lists the chain).
  // logit_bias is added with sequence_bias; presence/frequency come right after the
  // repetition penalty.
  // (tokens, bias): the last token gets the bias when the others end the sequence.
  std::vector<std::pair<std::vector<int32_t>, float>> sequence_bias;
  std::vector<std::pair<int32_t, float>> logit_bias;
  float encoder_repetition_penalty = 1.0f;  // > 0; on prompt tokens, > 1 favours them; 1 = off
  float repetition_penalty = 1.0f;    // > 0; 1 = off
  float presence_penalty = 0.0f;      // OpenAI: minus this once a token was generated
  float frequency_penalty = 0.0f;     // OpenAI: minus this per time a token was generated
  int64_t no_repeat_ngram_size = 0;
  int64_t encoder_no_repeat_ngram_size = 0;  // n-grams of the prompt never repeat; 0 = off
  std::vector<std::vector<int32_t>> bad_words_ids;
  int32_t forced_bos_token_id = -1;   // the only choice after a one-token prompt; -1 = off
  std::vector<int32_t> forced_eos_token_ids;  // the only choices for the last token
  bool remove_invalid_values = false; // nan -> 0, +-inf -> +-FLT_MAX
  std::pair<int64_t, double> exponential_decay_length_penalty{0, 1.0};  // (start, factor); factor 1 = off
  std::vector<int32_t> suppress_tokens;
  std::vector<int32_t> begin_suppress_tokens;  // banned for the first new token only

  // Warpers, when sampling: temperature -> top-h -> top-k -> top-p -> min-p -> typical
  // -> epsilon -> eta.
  bool do_sample = false;
  float temperature = 1.0f;
  float top_h = 0.0f;                 // 0 = off
  int64_t top_k = 0;                  // 0 = off
  float top_p = 1.0f;                 // 1 = off
  float min_p = 0.0f;                 // 0 = off
  float typical_p = 1.0f;             // 1 = off
  float epsilon_cutoff = 0.0f;        // 0 = off
  float eta_cutoff = 0.0f;            // 0 = off
  uint64_t seed = 0;

  // log_softmax after every processor and warper (changes beam scores, not greedy choices).
  bool renormalize_logits = false;

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

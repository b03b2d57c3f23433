#include "sampling/options.h"

#include <cmath>
#include <string>

#include "core/errors.h"

namespace llmos {

namespace {
void check(bool ok, const char* field, const std::string& what) {
  if (!ok) throw Error(Error::Kind::InvalidInput, "", field, what);
}
bool finite(float x) { return std::isfinite(x); }
}  // namespace

void DecodeOptions::validate(int64_t vocab_size) const {
  auto in_vocab = [&](int32_t t) { return t >= 0 && t < vocab_size; };
  const std::string vocab = " (vocabulary size " + std::to_string(vocab_size) + ")";
  check(max_new_tokens >= 0, "max_new_tokens", "must be >= 0");
  check(min_new_tokens >= 0, "min_new_tokens", "must be >= 0");
  check(min_length >= 0, "min_length", "must be >= 0");
  for (int32_t t : eos_token_ids) check(in_vocab(t), "eos_token_id", "token id " + std::to_string(t) + " out of range" + vocab);
  for (const auto& [t, b] : logit_bias) {
    check(in_vocab(t), "logit_bias", "token id " + std::to_string(t) + " out of range" + vocab);
    check(!std::isnan(b), "logit_bias", "bias must be a number");
  }
  check(finite(repetition_penalty) && repetition_penalty > 0, "repetition_penalty", "must be > 0");
  check(finite(presence_penalty), "presence_penalty", "must be a finite number");
  check(finite(frequency_penalty), "frequency_penalty", "must be a finite number");
  check(no_repeat_ngram_size >= 0, "no_repeat_ngram_size", "must be >= 0");
  for (const auto& w : bad_words_ids) {
    check(!w.empty(), "bad_words_ids", "each entry must be a non-empty list of token ids");
    for (int32_t t : w) check(in_vocab(t), "bad_words_ids", "token id " + std::to_string(t) + " out of range" + vocab);
  }
  check(finite(temperature) && (temperature > 0 || !do_sample), "temperature", "must be > 0 when sampling");
  check(top_k >= 0, "top_k", "must be >= 0");
  check(finite(top_p) && top_p > 0 && top_p <= 1, "top_p", "must be in (0, 1]");
  check(finite(min_p) && min_p >= 0 && min_p <= 1, "min_p", "must be in [0, 1]");
  check(finite(typical_p) && typical_p > 0 && typical_p <= 1, "typical_p", "must be in (0, 1]");
  check(num_beams >= 1, "num_beams", "must be >= 1");
  check(finite(length_penalty), "length_penalty", "must be a finite number");
  check(early_stopping >= 0 && early_stopping <= 2, "early_stopping", "must be True, False or 'never'");
  check(num_return_sequences >= 1, "num_return_sequences", "must be >= 1");
  check(num_beams == 1 || num_return_sequences <= num_beams, "num_return_sequences",
        "must be <= num_beams (" + std::to_string(num_beams) + ")");
  check(num_beams > 1 || do_sample || num_return_sequences == 1, "num_return_sequences",
        "greedy decoding returns one sequence: use do_sample=True or num_beams > 1");
  check(top_logprobs >= 0 && top_logprobs <= 20, "top_logprobs", "must be in [0, 20]");
}

}  // namespace llmos

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
  auto check_ids = [&](const char* field, const std::vector<int32_t>& ids) {
    for (int32_t t : ids) check(in_vocab(t), field, "token id " + std::to_string(t) + " out of range" + vocab);
  };
  check(max_new_tokens >= 0, "max_new_tokens", "must be >= 0");
  check(min_new_tokens >= 0, "min_new_tokens", "must be >= 0");
  check(min_length >= 0, "min_length", "must be >= 0");
  check_ids("eos_token_id", eos_token_ids);
  for (const auto& [t, b] : logit_bias) {
    check(in_vocab(t), "logit_bias", "token id " + std::to_string(t) + " out of range" + vocab);
    check(!std::isnan(b), "logit_bias", "bias must be a number");
  }
  for (const auto& [seq, b] : sequence_bias) {
    check(!seq.empty(), "sequence_bias", "each sequence must be a non-empty list of token ids");
    check_ids("sequence_bias", seq);
    check(!std::isnan(b), "sequence_bias", "bias must be a number");
  }
  check(finite(encoder_repetition_penalty) && encoder_repetition_penalty > 0, "encoder_repetition_penalty",
        "must be > 0");
  check(finite(repetition_penalty) && repetition_penalty > 0, "repetition_penalty", "must be > 0");
  check(finite(presence_penalty), "presence_penalty", "must be a finite number");
  check(finite(frequency_penalty), "frequency_penalty", "must be a finite number");
  check(no_repeat_ngram_size >= 0, "no_repeat_ngram_size", "must be >= 0");
  for (const auto& w : bad_words_ids) {
    check(!w.empty(), "bad_words_ids", "each entry must be a non-empty list of token ids");
    check_ids("bad_words_ids", w);
  }
  check(encoder_no_repeat_ngram_size >= 0, "encoder_no_repeat_ngram_size", "must be >= 0");
  check(forced_bos_token_id == -1 || in_vocab(forced_bos_token_id), "forced_bos_token_id",
        "token id " + std::to_string(forced_bos_token_id) + " out of range" + vocab);
  check_ids("forced_eos_token_id", forced_eos_token_ids);
  check(std::isfinite(exponential_decay_length_penalty.second), "exponential_decay_length_penalty",
        "the decay factor must be a finite number");
  check_ids("suppress_tokens", suppress_tokens);
  check_ids("begin_suppress_tokens", begin_suppress_tokens);
  check(finite(temperature) && (temperature > 0 || !do_sample), "temperature", "must be > 0 when sampling");
  check(top_k >= 0, "top_k", "must be >= 0");
  check(finite(top_p) && top_p > 0 && top_p <= 1, "top_p", "must be in (0, 1]");
  check(finite(min_p) && min_p >= 0 && min_p <= 1, "min_p", "must be in [0, 1]");
  check(finite(top_h) && top_h >= 0 && top_h <= 1, "top_h", "must be in (0, 1] (0 = off)");
  check(finite(typical_p) && typical_p > 0 && typical_p <= 1, "typical_p", "must be in (0, 1]");
  check(finite(epsilon_cutoff) && epsilon_cutoff >= 0 && epsilon_cutoff < 1, "epsilon_cutoff", "must be in [0, 1)");
  check(finite(eta_cutoff) && eta_cutoff >= 0 && eta_cutoff < 1, "eta_cutoff", "must be in [0, 1)");
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

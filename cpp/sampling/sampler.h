// Chooses the next token of one sequence: processors (always), warpers (when sampling),
// renormalization (when asked), then argmax or a seeded draw. Optionally reports log-probabilities, computed as
// log_softmax of the processed scores (what transformers' output_scores holds).
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "sampling/constraint.h"
#include "sampling/options.h"
#include "sampling/processors.h"
#include "sampling/warpers.h"

namespace llmos {

struct TokenLogprobs {
  float logprob = 0.f;                          // of the chosen token
  std::vector<std::pair<int32_t, float>> top;   // the top_logprobs best, best first
};

class Sampler {
 public:
  Sampler(const DecodeOptions& o, uint64_t seed) : o_(o), rng_(seed) {}
  // Processes `scores` in place and returns the chosen token; fills *lp when non-null.
  // allowed (mask_words(vocab) words, sampling/constraint.h), when non-null, bans every
  // token outside it before the processors see the scores.
  int32_t next(float* scores, int64_t vocab, const TokenHistory& h, TokenLogprobs* lp,
               const uint32_t* allowed = nullptr);

 private:
  const DecodeOptions& o_;
  std::mt19937_64 rng_;
};

// The whole chain on one row, in place: processors, warpers when sampling (at least
// min_keep tokens survive them), then log_softmax with renormalize_logits.
void process_scores(const DecodeOptions& o, const TokenHistory& h, float* scores, int64_t vocab, int64_t min_keep);

int32_t argmax(const float* x, int64_t n);  // first index of the largest value

// Draws an index with probability softmax(scores) (entries of -inf never drawn).
int32_t sample_softmax(const float* scores, int64_t n, std::mt19937_64& rng);

// The `k` best (index, score - lse) pairs of a row, best first.
std::vector<std::pair<int32_t, float>> top_logprobs(const float* scores, int64_t n, int64_t k, float lse);

}  // namespace llmos

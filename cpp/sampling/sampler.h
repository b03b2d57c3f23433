// Picks the next token from a row of logits. The chain follows transformers' order for
// sampling (temperature -> top-k -> top-p) so the tokens it may pick are the ones
// transformers' warpers keep; greedy is argmax over the raw logits.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace llmos {

struct SamplingParams {
  bool do_sample = false;
  float temperature = 1.0f;  // > 0
  int64_t top_k = 0;         // 0 = off
  float top_p = 1.0f;        // (0, 1]; 1 = off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // May reorder or overwrite `logits` (vocab values).
  int32_t sample(float* logits, int64_t vocab);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;  // scratch: candidate token ids
  std::vector<float> probs_;
};

int32_t argmax(const float* x, int64_t n);  // first index of the largest value

}  // namespace llmos

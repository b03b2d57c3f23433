#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/errors.h"

namespace llmos {

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {
  if (p.do_sample && !(p.temperature > 0.0f))
    throw Error(Error::Kind::InvalidInput, "", "temperature", "must be > 0 when sampling");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) throw Error(Error::Kind::InvalidInput, "", "top_p", "must be in (0, 1]");
  if (p.top_k < 0) throw Error(Error::Kind::InvalidInput, "", "top_k", "must be >= 0");
}

int32_t Sampler::sample(float* logits, int64_t vocab) {
  if (!p_.do_sample) return argmax(logits, vocab);
  if (p_.temperature != 1.0f)
    for (int64_t i = 0; i < vocab; ++i) logits[i] /= p_.temperature;

  // Candidates sorted by logit, best first; ties keep the lower id first (stable).
  order_.resize(size_t(vocab));
  std::iota(order_.begin(), order_.end(), 0);
  int64_t keep = vocab;
  if (p_.top_k > 0 && p_.top_k < vocab) {
    std::stable_sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
    // transformers keeps every token whose logit is >= the k-th largest (ties included).
    const float kth = logits[order_[size_t(p_.top_k - 1)]];
    keep = p_.top_k;
    while (keep < vocab && logits[order_[size_t(keep)]] >= kth) ++keep;
  } else {
    std::stable_sort(order_.begin(), order_.end(), [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  }

  // Softmax over the kept candidates.
  probs_.resize(size_t(keep));
  const float m = logits[order_[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) { probs_[size_t(i)] = std::exp(logits[order_[size_t(i)]] - m); sum += probs_[size_t(i)]; }
  for (int64_t i = 0; i < keep; ++i) probs_[size_t(i)] = float(probs_[size_t(i)] / sum);

  if (p_.top_p < 1.0f) {
    // transformers sorts ascending and drops tokens whose cumulative probability is
    // <= 1 - top_p; from the top, that keeps the smallest prefix whose mass reaches the
    // tail's complement. At least one token always stays.
    double tail = 0;  // mass of the tokens below index i
    int64_t cut = keep;
    for (int64_t i = keep - 1; i >= 1; --i) {
      tail += probs_[size_t(i)];
      if (tail <= 1.0 - double(p_.top_p)) cut = i;
      else break;
    }
    keep = cut;
    double s = 0;
    for (int64_t i = 0; i < keep; ++i) s += probs_[size_t(i)];
    for (int64_t i = 0; i < keep; ++i) probs_[size_t(i)] = float(probs_[size_t(i)] / s);
  }

  std::uniform_real_distribution<double> U(0.0, 1.0);
  double u = U(rng_), c = 0;
  for (int64_t i = 0; i < keep; ++i) {
    c += probs_[size_t(i)];
    if (u < c) return order_[size_t(i)];
  }
  return order_[size_t(keep - 1)];
}

}  // namespace llmos

#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "core/errors.h"

namespace llmos {

namespace {

// NaN or +inf scores mean the model's arithmetic broke down (non-finite weights, or
// activations that overflowed): argmax would quietly pick token 0, often EOS, and the
// caller would see an empty answer. One pass over the row, next to the vocab-sized matmul
// that made it. -inf is legitimate (a banned token).
void check_finite(const float* scores, int64_t vocab, const TokenHistory& h) {
  bool bad = false;
  for (int64_t i = 0; i < vocab; ++i) bad |= !(scores[i] < INFINITY);  // NaN compares false
  if (!bad) return;
  int64_t nan = 0, inf = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    nan += std::isnan(scores[i]);
    inf += scores[i] == INFINITY;
  }
  throw Error(Error::Kind::Numerical, "", "logits",
              "the logits of generation step " + std::to_string(h.n_generated()) + " (after " +
                  std::to_string(h.tokens().size()) + " tokens) hold " + std::to_string(nan) + " NaN and " +
                  std::to_string(inf) + " +inf of " + std::to_string(vocab) +
                  " values: the weights hold non-finite values or the activations overflowed "
                  "(`llmos verify` scans the weights)");
}

}  // namespace

void process_scores(const DecodeOptions& o, const TokenHistory& h, float* scores, int64_t vocab, int64_t min_keep) {
  apply_processors(o, h, scores, vocab);
  // After the processors, so that remove_invalid_values may still repair a row, as asked.
  check_finite(scores, vocab, h);
  if (o.do_sample) apply_warpers(o, scores, vocab, min_keep);
  if (o.renormalize_logits) {
    const float lse = log_sum_exp(scores, vocab);
    for (int64_t i = 0; i < vocab; ++i) scores[i] -= lse;
  }
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return int32_t(best);
}

int32_t sample_softmax(const float* scores, int64_t n, std::mt19937_64& rng) {
  // One exp per token (kept for the draw), then an inverse-CDF walk.
  thread_local std::vector<float> w;
  w.resize(size_t(n));
  float m = -INFINITY;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, scores[i]);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    w[size_t(i)] = scores[i] == -INFINITY ? 0.f : std::exp(scores[i] - m);
    total += w[size_t(i)];
  }
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng) * total;
  double c = 0;
  int64_t last = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (w[size_t(i)] == 0.f) continue;
    c += w[size_t(i)];
    last = i;
    if (u < c) return int32_t(i);
  }
  return int32_t(last);  // u landed on the rounding slack at the top
}

std::vector<std::pair<int32_t, float>> top_logprobs(const float* scores, int64_t n, int64_t k, float lse) {
  k = std::min(k, n);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), 0);
  auto better = [&](int32_t a, int32_t b) { return scores[a] > scores[b] || (scores[a] == scores[b] && a < b); };
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), better);
  std::vector<std::pair<int32_t, float>> out;
  for (int64_t i = 0; i < k; ++i) out.emplace_back(ids[size_t(i)], scores[ids[size_t(i)]] - lse);
  return out;
}

int32_t Sampler::next(float* scores, int64_t vocab, const TokenHistory& h, TokenLogprobs* lp,
                      const uint32_t* allowed) {
  if (allowed) {
    bool any = false;
    for (int64_t i = 0; i < vocab; ++i) {
      const bool ok = mask_allows(allowed, int32_t(i));
      any |= ok;
      if (!ok) scores[i] = -INFINITY;
    }
    if (!any)
      throw Error(Error::Kind::InvalidInput, "", "constraint",
                  "the output constraint allows no token after " + std::to_string(h.n_generated()) +
                      " generated tokens (the grammar cannot continue with this vocabulary)");
  }
  process_scores(o_, h, scores, vocab, 1);
  const int32_t tok = o_.do_sample ? sample_softmax(scores, vocab, rng_) : argmax(scores, vocab);
  if (lp) {
    const float lse = log_sum_exp(scores, vocab);
    lp->logprob = scores[tok] - lse;
    if (o_.top_logprobs > 0) lp->top = top_logprobs(scores, vocab, o_.top_logprobs, lse);
  }
  return tok;
}

}  // namespace llmos
